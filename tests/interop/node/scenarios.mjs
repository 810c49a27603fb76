#!/usr/bin/env node
// Runs one interop scenario with the official CometD JavaScript client against a Bayeux server.
//
//   node scenarios.mjs <scenario> <url> <websocket|long-polling>
//
// <url> is the server's HTTP Bayeux URL (e.g. http://127.0.0.1:8080/cometd); the client itself
// switches to ws:// for the websocket transport.
//
// On success it prints exactly one JSON line to stdout and exits 0. On failure it prints the reason
// and the last wire messages of every client to stderr and exits 1 (2: bad usage, 3: hard timeout).
// The "rehandshake" scenario also talks to its driver: it prints "READY" once subscribed, then
// waits for a "RESTARTED" line on stdin (the driver restarts the server in between).
// Client logs go to stderr: stdout carries only "READY" and the result line.
// Environment: SCENARIO_WAIT_MS (default 10000) bounds each wait for a reply or a message;
// SCENARIO_TIMEOUT_MS (default 30000, doubled for "ordered" and "rehandshake") bounds the whole run.

import { Console } from "node:console";
import { createInterface } from "node:readline";
import { adapt } from "cometd-nodejs-client";

// Every Client is a browser of its own, with its own cookie jar (for BAYEUX_BROWSER). The adapter's
// default jar is shared by all CometD objects in the process, like the tabs of one browser: then
// concurrent handshakes race for the browser cookie (the loser's session is refused with 402,
// as CometD's Java server does too) and long-polls beyond the first get "multiple-clients" advice.
// The adapter's cookie hooks are not told which client a request is for, so each client names
// itself in a request header.
const CLIENT_HEADER = "X-Interop-Client";
const cookieJars = new Map();

/** Cookie name -> "name=value" for one client. */
function cookieJar(client) {
    if (!cookieJars.has(client)) {
        cookieJars.set(client, new Map());
    }
    return cookieJars.get(client);
}

function requestCookieJar(uri) {
    return cookieJar(uri.headers?.[CLIENT_HEADER] ?? "");
}

adapt({
    cookies: {
        storeCookie(uri, header, callback) {
            const nameValue = header.split(";")[0].trim();
            const equals = nameValue.indexOf("=");
            if (equals > 0) {
                requestCookieJar(uri).set(nameValue.slice(0, equals), nameValue);
            }
            callback(null);
        },
        retrieveCookies(context, uri, callback) {
            callback(null, [...requestCookieJar(uri).values()]);
        },
    },
});
window.console = new Console({ stdout: process.stderr, stderr: process.stderr });
const { CometD, AckExtension } = await import("cometd");

const TRANSPORTS = ["websocket", "long-polling"];
const HARD_TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 30000);
const WAIT_MS = Number(process.env.SCENARIO_WAIT_MS || 10000);
const WIRE_TAIL = 25;

class ScenarioFailure extends Error {}

function check(condition, message) {
    if (!condition) {
        throw new ScenarioFailure(message);
    }
}

function json(value) {
    return JSON.stringify(value);
}

/** A plain-JSON copy of a message; drops the transport objects the client attaches to failures. */
function copy(message) {
    const seen = new WeakSet();
    return JSON.parse(JSON.stringify(message, (key, value) => {
        if (value instanceof Error) {
            return String(value);
        }
        if (typeof value === "object" && value !== null) {
            if (key === "transport" || seen.has(value)) {
                return undefined;
            }
            seen.add(value);
        }
        return value;
    }));
}

/** what: a description, or a function returning one when the deadline passes (to show the state then). */
function withDeadline(promise, ms, what) {
    let timer;
    const expired = new Promise((_, reject) => {
        timer = setTimeout(() => {
            const description = (typeof what === "function" ? what() : what).slice(0, 2000);
            reject(new ScenarioFailure(`timed out after ${ms} ms waiting for ${description}`));
        }, ms);
    });
    return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** Waits until condition() is true, re-checking whenever notify() is called. */
class Condition {
    #waiters = [];

    until(condition, what, ms = WAIT_MS) {
        if (condition()) {
            return Promise.resolve();
        }
        const waiter = { condition };
        const satisfied = new Promise((resolve) => {
            waiter.resolve = resolve;
            this.#waiters.push(waiter);
        });
        return withDeadline(satisfied, ms, what).finally(() => {
            this.#waiters = this.#waiters.filter((other) => other !== waiter);
        });
    }

    notify() {
        this.#waiters = this.#waiters.filter((waiter) => {
            if (waiter.condition()) {
                waiter.resolve();
                return false;
            }
            return true;
        });
    }
}

/** The messages one listener or subscription received, in arrival order. */
class Inbox extends Condition {
    messages = [];

    constructor(label) {
        super();
        this.label = label;
    }

    push = (message) => {
        this.messages.push(copy(message));
        this.notify();
    };

    get data() {
        return this.messages.map((message) => message.data);
    }

    get channels() {
        return this.messages.map((message) => message.channel);
    }

    untilCount(count, ms = WAIT_MS) {
        return this.until(() => this.messages.length >= count,
            () => `${count} message(s) on ${this.label} (got ${this.messages.length})`, ms);
    }

    untilData(predicate, what, ms = WAIT_MS) {
        return this.until(() => this.messages.some((message) => predicate(message.data)),
            () => `${what} on ${this.label} (got ${json(this.data)})`, ms);
    }
}

/**
 * A pass-through extension registered first, so it sees incoming messages as they came off the
 * wire and outgoing messages as they go onto it (after every other extension ran).
 */
class WireTap extends Condition {
    log = [];

    incoming(message) {
        this.#record("in", message);
        return message;
    }

    outgoing(message) {
        this.#record("out", message);
        return message;
    }

    /** Channels of every message with data the server delivered to this client. */
    deliveredChannels() {
        return this.#matching("in", (m) => m.data !== undefined).map((m) => m.channel);
    }

    /** Messages with data the server delivered on channel, whether or not a listener got them. */
    deliveries(channel) {
        return this.#matching("in", (m) => m.channel === channel && m.data !== undefined);
    }

    replies(channel) {
        return this.#matching("in", (m) => m.channel === channel && m.data === undefined);
    }

    requests(channel) {
        return this.#matching("out", (m) => m.channel === channel);
    }

    tail(count = WIRE_TAIL) {
        return this.log.slice(-count);
    }

    #record(dir, message) {
        this.log.push({ dir, message: copy(message) });
        this.notify();
    }

    #matching(dir, predicate) {
        return this.log.filter((entry) => entry.dir === dir && predicate(entry.message)).map((entry) => entry.message);
    }
}

/** An official CometD client plus promise-returning wrappers around its callback API. */
class Client {
    constructor(name, { url, transport, ack = false }) {
        this.name = name;
        this.transport = transport;
        this.cometd = new CometD(name);
        this.tap = new WireTap();
        this.cometd.registerExtension("wiretap", this.tap);
        if (ack) {
            this.cometd.registerExtension("ack", new AckExtension());
        }
        if (transport === "long-polling") {
            this.cometd.unregisterTransport("websocket");
        }
        this.cometd.configure({ url, logLevel: "warn", requestHeaders: { [CLIENT_HEADER]: name } });
        this.connects = new Inbox(`${name} /meta/connect`);
        this.cometd.addListener("/meta/connect", this.connects.push);
        this.handshakeReply = null;
    }

    get clientId() {
        return this.cometd.getClientId();
    }

    /** The Cookie header this client's HTTP requests carry. */
    get cookieHeader() {
        return [...cookieJar(this.name).values()].join("; ");
    }

    get negotiatedTransport() {
        const transport = this.cometd.getTransport();
        return transport ? transport.type : null;
    }

    /** Handshakes, waits for the first successful /meta/connect and checks the transport. */
    async handshake() {
        const reply = await this.#request("/meta/handshake", (callback) => this.cometd.handshake(callback));
        check(reply.successful === true, `${this.name}: handshake failed: ${json(reply)}`);
        this.handshakeReply = reply;
        await this.connects.until(() => this.connects.messages.some((m) => m.successful === true),
            () => `${this.name}: first successful /meta/connect (got ${json(this.connects.messages)})`);
        this.checkTransport();
        return reply;
    }

    checkTransport() {
        check(this.negotiatedTransport === this.transport,
            `${this.name}: transport is ${this.negotiatedTransport}, expected ${this.transport}`);
    }

    /**
     * Subscribes and resolves once the server acknowledged it; messages go to the given inbox.
     * Only messages with data are kept: the client also notifies a "/**" subscription of its own
     * /meta/* replies.
     */
    async subscribe(channel, inbox = new Inbox(`${this.name} ${channel}`)) {
        let subscription;
        const onMessage = (message) => message.data !== undefined && inbox.push(message);
        const reply = await this.#request(`/meta/subscribe ${channel}`, (callback) => {
            subscription = this.cometd.subscribe(channel, onMessage, callback);
        });
        check(reply.successful === true, `${this.name}: subscribe to ${channel} failed: ${json(reply)}`);
        return { subscription, inbox, reply };
    }

    async unsubscribe(subscription) {
        const channel = subscription.channel;
        const reply = await this.#request(`/meta/unsubscribe ${channel}`,
            (callback) => this.cometd.unsubscribe(subscription, callback));
        check(reply.successful === true, `${this.name}: unsubscribe from ${channel} failed: ${json(reply)}`);
        return reply;
    }

    listen(channel) {
        const inbox = new Inbox(`${this.name} listener ${channel}`);
        this.cometd.addListener(channel, inbox.push);
        return inbox;
    }

    /** Publishes and resolves with the server's acknowledgement (a reply without data). */
    async publish(channel, data, timeout = WAIT_MS) {
        const reply = await this.#request(`publish acknowledgement on ${channel}`,
            (callback) => this.cometd.publish(channel, data, callback), timeout);
        check(reply.successful === true, `${this.name}: publish to ${channel} failed: ${json(reply)}`);
        return reply;
    }

    /** Resolves with the reply; the client itself fails the call with 406::timeout after WAIT_MS. */
    remoteCall(target, data) {
        return this.#request(`remote call ${target}`,
            (callback) => this.cometd.remoteCall(target, data, WAIT_MS, callback), 2 * WAIT_MS);
    }

    disconnect() {
        return this.#request("/meta/disconnect", (callback) => this.cometd.disconnect(callback));
    }

    /** Best-effort disconnect at the end of a scenario; never throws. */
    async close() {
        if (!this.cometd.isDisconnected()) {
            await this.disconnect().catch(() => undefined);
        }
    }

    #request(what, send, timeout = WAIT_MS) {
        return withDeadline(new Promise((resolve) => send((reply) => resolve(copy(reply)))),
            timeout, `${this.name}: reply to ${what}`);
    }
}

/** What a scenario gets: the clients it creates are checked and disconnected at the end. */
class Context {
    clients = [];
    #id = `${process.pid.toString(36)}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

    constructor(url, transport) {
        this.url = url;
        this.transport = transport;
    }

    /** A channel name no other scenario run uses, e.g. /chat/room-lq3x9a. */
    channel(prefix) {
        return `${prefix}-${this.#id}`;
    }

    client(name, options = {}) {
        const client = new Client(name, { url: this.url, transport: this.transport, ...options });
        this.clients.push(client);
        return client;
    }

    async connect(name, options = {}) {
        const client = this.client(name, options);
        await client.handshake();
        return client;
    }

    async connectMany(...names) {
        return Promise.all(names.map((name) => this.connect(name)));
    }

    /** The transport must not have silently fallen back to another one during the scenario. */
    checkTransports() {
        for (const client of this.clients.filter((c) => !c.cometd.isDisconnected())) {
            client.checkTransport();
        }
    }

    async closeAll() {
        await Promise.all(this.clients.map((client) => client.close()));
    }

    /** The last wire messages of every client, one line each: "alice <- {...}". */
    wireTails() {
        return this.clients.flatMap((client) => client.tap.tail().map(({ dir, message }) =>
            `${client.name} ${dir === "in" ? "<-" : "->"} ${json(message)}`)).join("\n");
    }
}

function seqs(inbox) {
    return inbox.data.map((data) => data.seq);
}

/** Publishes numbered messages {seq, last} in order, without waiting in between. */
async function publishNumbered(publisher, channel, count, { extra = {}, timeout = WAIT_MS } = {}) {
    const acks = [];
    for (let seq = 0; seq < count; ++seq) {
        acks.push(publisher.publish(channel, { seq, last: seq === count - 1, ...extra }, timeout));
    }
    return Promise.all(acks);
}

async function readLine(expected) {
    const lines = createInterface({ input: process.stdin });
    try {
        for await (const line of lines) {
            if (line.trim() === expected) {
                return;
            }
        }
        throw new ScenarioFailure(`stdin closed before "${expected}"`);
    } finally {
        lines.close();
    }
}

// Scenarios: each returns the facts the Python test asserts on.

async function handshake(ctx) {
    const [alice, bob] = await ctx.connectMany("alice", "bob");
    const reply = alice.handshakeReply;
    return {
        clientIds: [alice.clientId, bob.clientId],
        transports: [alice.negotiatedTransport, bob.negotiatedTransport],
        replyClientIds: [reply.clientId, bob.handshakeReply.clientId],
        version: reply.version,
        supportedConnectionTypes: reply.supportedConnectionTypes,
        advice: reply.advice ?? null,
        firstConnect: alice.connects.messages[0],
    };
}

async function broadcast(ctx) {
    const channel = ctx.channel("/chat/room");
    const [alice, bob] = await ctx.connectMany("alice", "bob");
    const { inbox: aliceInbox } = await alice.subscribe(channel);
    const { inbox: bobInbox } = await bob.subscribe(channel);
    const acks = await publishNumbered(alice, channel, 3, { extra: { from: alice.clientId } });
    for (const inbox of [aliceInbox, bobInbox]) {
        await inbox.untilData((data) => data.last, "the last message");
    }
    return {
        channel,
        publishAcks: acks.map((ack) => ack.successful),
        publisher: { seqs: seqs(aliceInbox), channels: aliceInbox.channels },
        subscriber: { seqs: seqs(bobInbox), channels: bobInbox.channels, data: bobInbox.data },
        publisherClientId: alice.clientId,
    };
}

async function wildcards(ctx) {
    const root = ctx.channel("/wild");
    const [single, multi, publisher] = await ctx.connectMany("single", "multi", "publisher");
    const { inbox: singleInbox } = await single.subscribe(`${root}/*`);
    const { inbox: multiInbox } = await multi.subscribe(`${root}/**`);
    const published = [`${root}/a/b`, root, `${root}cat/a`, `${root}/a`, `${root}/a/b/c`, `/other${root}/a`, `${root}/end`];
    for (const channel of published) {
        await publisher.publish(channel, { channel });
    }
    const end = `${root}/end`;
    await singleInbox.untilData((data) => data.channel === end, end);
    await multiInbox.untilData((data) => data.channel === end, end);
    return {
        root,
        published,
        single: { subscription: `${root}/*`, notified: singleInbox.channels, delivered: single.tap.deliveredChannels() },
        multi: { subscription: `${root}/**`, notified: multiInbox.channels, delivered: multi.tap.deliveredChannels() },
    };
}

async function serviceEcho(ctx) {
    const barrier = ctx.channel("/barrier/echo");
    const [sender, observer] = await ctx.connectMany("sender", "observer");
    const echoes = sender.listen("/service/echo");
    const { inbox: senderBarrier } = await sender.subscribe(barrier);
    const { inbox: observed } = await observer.subscribe("/**");
    const request = { text: "hello echo", n: 42, nested: { list: [1, 2, 3] } };
    const ack = await sender.publish("/service/echo", request);
    await echoes.untilCount(1);
    // Everything the server queued for the observer before the barrier arrives ahead of it.
    await sender.publish(barrier, { barrier: true });
    await senderBarrier.untilCount(1);
    await observed.untilData((data) => data.barrier === true, "the barrier");
    return {
        request,
        barrier,
        ack: { successful: ack.successful, channel: ack.channel },
        echoes: echoes.messages.map((m) => ({ channel: m.channel, data: m.data })),
        senderServiceDeliveries: sender.tap.deliveries("/service/echo").length,
        observerChannels: observed.channels,
        observerServiceDeliveries: observer.tap.deliveries("/service/echo").length,
    };
}

async function remoteCall(ctx) {
    const caller = await ctx.connect("caller");
    const requests = [0, 1, 2].map((n) => ({ n, text: `ping ${n}`, when: Date.now() }));
    const replies = await Promise.all(requests.map((request) => caller.remoteCall("rpc/echo", request)));
    return {
        requests,
        replies: replies.map((reply) => ({
            successful: reply.successful, channel: reply.channel, data: reply.data, error: reply.error ?? null,
        })),
    };
}

async function unsubscribe(ctx) {
    const channel = ctx.channel("/news");
    const barrier = ctx.channel("/barrier/news");
    const [reader, publisher] = await ctx.connectMany("reader", "publisher");
    const { subscription, inbox } = await reader.subscribe(channel);
    const { inbox: barrierInbox } = await reader.subscribe(barrier);
    await publisher.publish(channel, { seq: 1 });
    await inbox.untilCount(1);
    const reply = await reader.unsubscribe(subscription);
    await publisher.publish(channel, { seq: 2 });
    await publisher.publish(barrier, { barrier: true });
    await barrierInbox.untilCount(1);
    return {
        channel,
        unsubscribeReply: { successful: reply.successful, subscription: reply.subscription },
        notified: seqs(inbox),
        // What the server sent, even if the client dropped it for lack of a listener.
        delivered: reader.tap.deliveries(channel).map((m) => m.data.seq),
    };
}

/** POSTs raw Bayeux messages with the client's clientId and cookies, as its browser would. */
async function postAs(ctx, client, clientId, messages) {
    const request = messages.map((message) => ({ ...message, clientId }));
    const response = await fetch(`${ctx.url.replace(/\/$/, "")}/`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Cookie: client.cookieHeader },
        body: json(request),
    });
    return { request, httpStatus: response.status, replies: await response.json() };
}

async function disconnect(ctx) {
    const channel = ctx.channel("/leaving");
    const client = await ctx.connect("leaver");
    await client.subscribe(channel);
    const clientId = client.clientId;
    // The server binds HTTP sessions to the browser cookie, which only the long-polling client
    // keeps (the Node websocket client has no cookies): probe the session from outside only then.
    const probing = ctx.transport === "long-polling";
    const probe = (messages) => (probing ? postAs(ctx, client, clientId, messages) : null);
    const before = await probe([{ id: "probe-1", channel, data: { probe: true } }]);
    const reply = await client.disconnect();
    const after = await probe([{ id: "probe-2", channel: "/meta/connect", connectionType: "long-polling" }]);
    return {
        clientId,
        reply: { successful: reply.successful, channel: reply.channel, error: reply.error ?? null },
        statusAfter: client.cometd.getStatus(),
        clientIdAfter: client.clientId,
        // A publish as the live session is accepted; a /meta/connect after the disconnect is not.
        probeBefore: before,
        probeAfter: after,
    };
}

async function ackExtension(ctx) {
    const channel = ctx.channel("/acked");
    const subscriber = await ctx.connect("subscriber", { ack: true });
    const publisher = await ctx.connect("publisher");
    const { inbox } = await subscriber.subscribe(channel);
    const count = 5;
    await publishNumbered(publisher, channel, count);
    await inbox.untilData((data) => data.last, "the last message");
    // With acks the messages come in a /meta/connect reply; the next /meta/connect acknowledges them.
    const connectsSoFar = subscriber.tap.requests("/meta/connect").length;
    await subscriber.tap.until(() => subscriber.tap.requests("/meta/connect").length > connectsSoFar,
        "the /meta/connect acknowledging the messages");
    const handshakeRequest = subscriber.tap.requests("/meta/handshake")[0];
    return {
        handshakeRequestExt: handshakeRequest.ext ?? null,
        handshakeReplyExt: subscriber.handshakeReply.ext ?? null,
        received: seqs(inbox),
        connectAcksSent: subscriber.tap.requests("/meta/connect").map((m) => m.ext?.ack ?? null),
        connectAcksReceived: subscriber.tap.replies("/meta/connect").map((m) => m.ext?.ack ?? null),
    };
}

async function ordered(ctx) {
    const count = 1000;
    const channel = ctx.channel("/ordered");
    const [subscriber, publisher] = await ctx.connectMany("subscriber", "publisher");
    const { inbox } = await subscriber.subscribe(channel);
    const acks = await publishNumbered(publisher, channel, count, { timeout: 4 * WAIT_MS });
    await inbox.untilData((data) => data.last, "the last message", 4 * WAIT_MS);
    return {
        count,
        acked: acks.filter((ack) => ack.successful).length,
        received: seqs(inbox),
    };
}

async function rehandshake(ctx) {
    const channel = ctx.channel("/restart");
    const survivor = ctx.client("survivor");
    const inbox = new Inbox(`survivor ${channel}`);
    const handshakes = new Inbox("survivor /meta/handshake");
    const subscribes = new Inbox("survivor subscribe outcomes");
    const resubscribed = (count) => subscribes.until(() => subscribes.messages.filter((m) => m.successful).length >= count,
        () => `successful subscription #${count} (got ${json(subscribes.messages)})`);
    // The documented CometD pattern: (re)subscribe whenever a handshake succeeds.
    survivor.cometd.addListener("/meta/handshake", (reply) => {
        handshakes.push(reply);
        if (reply.successful) {
            survivor.subscribe(channel, inbox).then(
                ({ reply }) => subscribes.push(reply),
                (error) => subscribes.push({ successful: false, error: error.message }));
        }
    });
    await survivor.handshake();
    await resubscribed(1);
    await survivor.publish(channel, { phase: "before" });
    await inbox.untilCount(1);

    process.stdout.write("READY\n");
    await readLine("RESTARTED");

    const successful = () => handshakes.messages.filter((m) => m.successful);
    await handshakes.until(() => successful().length >= 2,
        () => `a second successful handshake (got ${json(handshakes.messages)})`, 3 * WAIT_MS);
    await resubscribed(2);
    const publisher = await ctx.connect("publisher");
    await publisher.publish(channel, { phase: "after" });
    await inbox.untilData((data) => data.phase === "after", "the message published after the restart");
    const failedConnects = survivor.tap.replies("/meta/connect").filter((m) => m.successful === false);
    return {
        clientIds: successful().map((m) => m.clientId),
        reestablish: successful().map((m) => m.reestablish),
        handshakeAttempts: handshakes.messages.length,
        failedConnects: failedConnects.map((m) => ({ error: m.error ?? null, advice: m.advice ?? null })),
        received: inbox.data.map((data) => data.phase),
        subscriptions: subscribes.messages.map((m) => ({ successful: m.successful, subscription: m.subscription })),
    };
}

// name -> [scenario, hard timeout in ms]
const SCENARIOS = {
    handshake: [handshake, HARD_TIMEOUT_MS],
    broadcast: [broadcast, HARD_TIMEOUT_MS],
    wildcards: [wildcards, HARD_TIMEOUT_MS],
    "service-echo": [serviceEcho, HARD_TIMEOUT_MS],
    "remote-call": [remoteCall, HARD_TIMEOUT_MS],
    unsubscribe: [unsubscribe, HARD_TIMEOUT_MS],
    disconnect: [disconnect, HARD_TIMEOUT_MS],
    ack: [ackExtension, HARD_TIMEOUT_MS],
    ordered: [ordered, 2 * HARD_TIMEOUT_MS],
    rehandshake: [rehandshake, 2 * HARD_TIMEOUT_MS],
};

function exit(code, stream, text) {
    stream.write(`${text}\n`, () => process.exit(code));
}

async function main([name, url, transport]) {
    const [scenario, hardTimeout] = SCENARIOS[name] ?? [];
    if (!scenario || !url || !TRANSPORTS.includes(transport)) {
        exit(2, process.stderr,
            `usage: node scenarios.mjs <${Object.keys(SCENARIOS).join("|")}> <url> <${TRANSPORTS.join("|")}>`);
        return;
    }
    setTimeout(() => exit(3, process.stderr, `FAIL ${name} [${transport}]: hard timeout after ${hardTimeout} ms`),
        hardTimeout);
    const ctx = new Context(url, transport);
    try {
        const result = await scenario(ctx);
        ctx.checkTransports();
        await ctx.closeAll();
        exit(0, process.stdout, json({ scenario: name, transport, ok: true, ...result }));
    } catch (error) {
        const reason = error instanceof ScenarioFailure ? error.message : error.stack;
        const wire = ctx.wireTails();
        await ctx.closeAll();
        exit(1, process.stderr, `FAIL ${name} [${transport}]: ${reason}\nlast wire messages per client:\n${wire}`);
    }
}

await main(process.argv.slice(2));
