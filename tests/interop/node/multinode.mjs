#!/usr/bin/env node
// Multi-node scenarios with the official CometD JavaScript client, against a cluster of Bayeux
// nodes sharing Redis, reached directly or through HAProxy (driven by tests/multinode).
//
//   node multinode.mjs <scenario> '<json config>'
//
// The config names the endpoints: {"nodes": {"node1": "http://127.0.0.1:P1/cometd", ...},
// "lb": "http://127.0.0.1:PH/cometd", ...} plus scenario parameters (see each scenario).
//
// On success it prints one JSON line to stdout and exits 0; on failure it prints the reason and
// the last wire messages of every client to stderr and exits 1 (2: bad usage, 3: hard timeout).
// Scenarios that need the driver to break something talk to it over stdin/stdout lines
// ("NODES {...}", "KILL_NOW", "READY" out; "START", "KILLED <node>", "REDIS_DOWN", ... in).
// Environment: SCENARIO_WAIT_MS (default 10000) bounds each wait for a reply or a message;
// SCENARIO_TIMEOUT_MS (default 60000) bounds the whole run.

import { Console } from "node:console";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { adapt } from "cometd-nodejs-client";

// Every Client is a browser of its own, with its own cookie jar: the BAYEUX_BROWSER cookie of
// the server and HAProxy's SRV cookie. The adapter's cookie hooks are not told which client a
// request is for, and its WebSocket sends no cookies at all, so each client puts its name in
// its URL (`?client=name`; CometD then sends every request, websocket upgrades included, to
// that URL, without appending /handshake, /connect... to the path as it does for a URL without
// a query) and the WebSocket below sends and keeps cookies as a browser would.
const cookieJars = new Map();
/** Every Set-Cookie a client got, in order: {name, value, at}. */
const setCookieLogs = new Map();

function cookieJar(client) {
    if (!cookieJars.has(client)) {
        cookieJars.set(client, new Map());
        setCookieLogs.set(client, []);
    }
    return cookieJars.get(client);
}

function clientOf(url) {
    return new URL(url).searchParams.get("client") ?? "";
}

function storeCookie(client, header) {
    const nameValue = header.split(";")[0].trim();
    const equals = nameValue.indexOf("=");
    if (equals > 0) {
        const name = nameValue.slice(0, equals);
        cookieJar(client).set(name, nameValue);
        setCookieLogs.get(client).push({ name, value: nameValue.slice(equals + 1), at: now() });
    }
}

function cookieHeader(client) {
    return [...cookieJar(client).values()].join("; ");
}

adapt({
    cookies: {
        storeCookie(uri, header, callback) {
            storeCookie(clientOf(uri), header);
            callback(null);
        },
        retrieveCookies(context, uri, callback) {
            callback(null, [...cookieJar(clientOf(uri)).values()]);
        },
    },
});

/** The adapter's WebSocket (the `ws` package), with the client's cookies, like a browser's. */
class BrowserWebSocket extends window.WebSocket {
    constructor(url, protocols) {
        const client = clientOf(url);
        const cookies = cookieHeader(client);
        super(url, protocols, cookies ? { headers: { Cookie: cookies } } : {});
        this.on("upgrade", (response) => {
            for (const header of [response.headers["set-cookie"] ?? []].flat()) {
                storeCookie(client, header);
            }
        });
    }
}
window.WebSocket = BrowserWebSocket;
window.console = new Console({ stdout: process.stderr, stderr: process.stderr });
const { CometD } = await import("cometd");

const TRANSPORTS = ["websocket", "long-polling"];
const HARD_TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 60000);
const WAIT_MS = Number(process.env.SCENARIO_WAIT_MS || 10000);
const WIRE_TAIL = 30;

class ScenarioFailure extends Error {}

function check(condition, message) {
    if (!condition) {
        throw new ScenarioFailure(message);
    }
}

function json(value) {
    return JSON.stringify(value);
}

function now() {
    return performance.now();
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A plain-JSON copy of a message; drops the transport objects the client attaches to failures. */
function copy(message) {
    const seen = new WeakSet();
    return JSON.parse(JSON.stringify(message, (key, value) => {
        if (value instanceof Error) {
            return String(value);
        }
        if (typeof value === "object" && value !== null) {
            if (key === "transport" || key === "xhr" || seen.has(value)) {
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
            const description = (typeof what === "function" ? what() : what).slice(0, 3000);
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
        if (message.data !== undefined) {
            this.messages.push(copy(message));
            this.notify();
        }
    };

    get data() {
        return this.messages.map((message) => message.data);
    }

    untilData(predicate, what, ms = WAIT_MS) {
        return this.until(() => this.messages.some((message) => predicate(message.data)),
            () => `${what} on ${this.label} (got ${json(this.data).slice(0, 1500)})`, ms);
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

    requests(channel) {
        return this.#matching("out", (m) => m.channel === channel);
    }

    tail(count = WIRE_TAIL) {
        return this.log.slice(-count);
    }

    #record(dir, message) {
        this.log.push({ dir, at: now(), message: copy(message) });
        this.notify();
    }

    #matching(dir, predicate) {
        return this.log.filter((entry) => entry.dir === dir && predicate(entry.message)).map((entry) => entry.message);
    }
}

/**
 * The replay extension, as Salesforce's cometdReplayExtension does it for the CometD client:
 * asks for replay at handshake; once the server agreed, every subscribe to a durable channel
 * carries `ext.replay = {channel: id}`, the last replayId seen on that channel (tracked on the
 * way in), or `initial` (-2: all retained, -1: new only) before the first one.
 */
class ReplayExtension {
    negotiated = false;
    lastIds = new Map();

    constructor({ durable = (channel) => channel.startsWith("/events/"), initial = -2 } = {}) {
        this.durable = durable;
        this.initial = initial;
    }

    incoming(message) {
        if (message.channel === "/meta/handshake") {
            this.negotiated = message.successful === true && message.ext?.replay === true;
        } else if (this.durable(message.channel)) {
            const replayId = message.data?.event?.replayId;
            if (Number.isInteger(replayId)) {
                this.lastIds.set(message.channel, replayId);
            }
        }
        return message;
    }

    outgoing(message) {
        if (message.channel === "/meta/handshake") {
            message.ext = { ...message.ext, replay: true };
        } else if (message.channel === "/meta/subscribe" && this.negotiated && this.durable(message.subscription)) {
            const from = this.lastIds.get(message.subscription) ?? this.initial;
            message.ext = { ...message.ext, replay: { [message.subscription]: from } };
        }
        return message;
    }
}

/** An official CometD client, a browser of its own, plus promise-returning wrappers. */
class Client {
    constructor(name, { url, transport, replay = null, configure = {} }) {
        check(TRANSPORTS.includes(transport), `unknown transport ${transport}`);
        this.name = name;
        this.transport = transport;
        this.url = `${url}${url.includes("?") ? "&" : "?"}client=${encodeURIComponent(name)}`;
        this.cometd = new CometD(name);
        this.tap = new WireTap();
        this.cometd.registerExtension("wiretap", this.tap);
        if (replay) {
            this.replay = new ReplayExtension(replay === true ? {} : replay);
            this.cometd.registerExtension("replay", this.replay);
        }
        if (transport === "long-polling") {
            this.cometd.unregisterTransport("websocket");
        }
        this.cometd.configure({ url: this.url, logLevel: "warn", ...configure });
        this.connects = new Inbox(`${name} /meta/connect`);
        this.cometd.addListener("/meta/connect", (m) => this.connects.push({ ...m, data: m.successful }));
    }

    get clientId() {
        return this.cometd.getClientId();
    }

    get cookieHeader() {
        return cookieHeader(this.name);
    }

    cookie(name) {
        const nameValue = cookieJar(this.name).get(name);
        return nameValue === undefined ? null : nameValue.slice(name.length + 1);
    }

    /** Every Set-Cookie for `name` this client got: [value, ...]. */
    setCookies(name) {
        return setCookieLogs.get(this.name).filter((c) => c.name === name).map((c) => c.value);
    }

    /** The node HAProxy routes this client to: its SRV cookie (null when not through HAProxy). */
    get lbNode() {
        return this.cookie("SRV");
    }

    get negotiatedTransport() {
        const transport = this.cometd.getTransport();
        return transport ? transport.type : null;
    }

    /** Handshakes and waits for the first successful /meta/connect. */
    async handshake() {
        const reply = await this.#request("/meta/handshake", (callback) => this.cometd.handshake(callback));
        check(reply.successful === true, `${this.name}: handshake failed: ${json(reply)}`);
        await this.connects.until(() => this.connects.data.includes(true),
            () => `${this.name}: first successful /meta/connect (got ${json(this.connects.messages)})`);
        check(this.negotiatedTransport === this.transport,
            `${this.name}: transport is ${this.negotiatedTransport}, expected ${this.transport}`);
        return reply;
    }

    /** Resolves with the subscribe reply, successful or not. */
    subscribeRaw(channel, inbox = new Inbox(`${this.name} ${channel}`)) {
        return this.#request(`/meta/subscribe ${channel}`,
            (callback) => this.cometd.subscribe(channel, inbox.push, callback));
    }

    async subscribe(channel, inbox = new Inbox(`${this.name} ${channel}`)) {
        const reply = await this.subscribeRaw(channel, inbox);
        check(reply.successful === true, `${this.name}: subscribe to ${channel} failed: ${json(reply)}`);
        return inbox;
    }

    listen(channel) {
        const inbox = new Inbox(`${this.name} listener ${channel}`);
        this.cometd.addListener(channel, inbox.push);
        return inbox;
    }

    /** Resolves with the server's acknowledgement, successful or not. */
    publishRaw(channel, data, timeout = WAIT_MS) {
        return this.#request(`publish acknowledgement on ${channel}`,
            (callback) => this.cometd.publish(channel, data, callback), timeout);
    }

    async publish(channel, data, timeout = WAIT_MS) {
        const reply = await this.publishRaw(channel, data, timeout);
        check(reply.successful === true, `${this.name}: publish to ${channel} failed: ${json(reply)}`);
        return reply;
    }

    /**
     * A CometD remote call: a publish on /service/<target> whose reply carries data. The demo
     * services (user/bind, user/send) reply with data, which the official client hands to a
     * plain publish()'s callback never (it takes a publish reply with data for a message):
     * call them this way.
     */
    async call(target, data) {
        const reply = await this.#request(`remote call ${target}`,
            (callback) => this.cometd.remoteCall(target, data, WAIT_MS, callback), 2 * WAIT_MS);
        check(reply.successful === true, `${this.name}: remote call ${target} failed: ${json(reply)}`);
        return reply;
    }

    /** GET /health next to the client's URL with its cookies: which node HAProxy sends it to. */
    async health() {
        const url = new URL(this.url);
        url.pathname = "/health";
        url.search = "";
        const response = await fetch(url, { headers: { Cookie: this.cookieHeader } });
        return { status: response.status, ...(await response.json()) };
    }

    /**
     * Every /meta/connect that failed: refused by the server ({error}) or by the transport
     * ({reason, httpCode}: a dropped connection, a proxy's 502...), as listeners are told.
     */
    failedConnects() {
        return this.connects.messages.filter((m) => m.successful !== true).map((m) => ({
            error: m.error ?? null,
            reason: m.failure?.reason ?? null,
            httpCode: m.failure?.httpCode ?? null,
        }));
    }

    async close() {
        if (!this.cometd.isDisconnected()) {
            await this.#request("/meta/disconnect", (callback) => this.cometd.disconnect(callback), 3000)
                .catch(() => undefined);
        }
    }

    #request(what, send, timeout = WAIT_MS) {
        return withDeadline(new Promise((resolve) => send((reply) => resolve(copy(reply)))),
            timeout, `${this.name}: reply to ${what}`);
    }
}

/** What a scenario gets: the clients it creates are disconnected at the end. */
class Context {
    clients = [];
    #id = `${process.pid.toString(36)}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

    constructor(config) {
        this.config = config;
    }

    /** A channel name no other run uses, e.g. /chat/x-lq3x9a. */
    channel(prefix) {
        return `${prefix}-${this.#id}`;
    }

    node(nodeId) {
        const url = this.config.nodes?.[nodeId];
        check(url, `no URL for ${nodeId} in the config`);
        return url;
    }

    client(name, options) {
        const client = new Client(name, options);
        this.clients.push(client);
        return client;
    }

    async connect(name, options) {
        const client = this.client(name, options);
        await client.handshake();
        return client;
    }

    async closeAll() {
        await Promise.all(this.clients.map((client) => client.close()));
    }

    wireTails() {
        return this.clients.flatMap((client) => client.tap.tail().map(({ dir, message }) =>
            `${client.name} ${dir === "in" ? "<-" : "->"} ${json(message)}`)).join("\n");
    }
}

/** Lines from the driver on stdin, one at a time. */
class Driver {
    #lines = [];
    #closed = false;
    #changed = new Condition();

    constructor() {
        const reader = createInterface({ input: process.stdin });
        reader.on("line", (line) => {
            this.#lines.push(line.trim());
            this.#changed.notify();
        });
        reader.on("close", () => {
            this.#closed = true;
            this.#changed.notify();
        });
    }

    say(line) {
        process.stdout.write(`${line}\n`);
    }

    /** Waits for a line `word` or `word <argument>`; returns the argument ("" if none). */
    async expect(word, ms = 3 * WAIT_MS) {
        const matches = (line) => line === word || line.startsWith(`${word} `);
        await this.#changed.until(() => this.#closed || this.#lines.some(matches),
            `"${word}" from the driver`, ms);
        const index = this.#lines.findIndex(matches);
        check(index >= 0, `stdin closed before "${word}"`);
        const [line] = this.#lines.splice(index, 1);
        return line.slice(word.length).trim();
    }
}

const driver = new Driver();

// Scenarios: each returns the facts the Python test asserts on.

/**
 * Cross-node broadcast: one subscriber per node (connected to the node itself), the publisher
 * on config.publisherNode publishes config.count numbered messages without waiting in between.
 */
async function broadcast(ctx, { transport, count = 200, publisherNode = "node1" }) {
    const channel = ctx.channel("/chat/x");
    const nodeIds = Object.keys(ctx.config.nodes);
    const subscribers = await Promise.all(nodeIds.map((nodeId) =>
        ctx.connect(`sub-${nodeId}`, { url: ctx.node(nodeId), transport })));
    const inboxes = await Promise.all(subscribers.map((client) => client.subscribe(channel)));
    const publisher = await ctx.connect("publisher", { url: ctx.node(publisherNode), transport });
    const acks = [];
    for (let seq = 0; seq < count; ++seq) {
        acks.push(publisher.publishRaw(channel, { seq, last: seq === count - 1 }, 4 * WAIT_MS));
    }
    const replies = await Promise.all(acks);
    const failed = replies.filter((reply) => reply.successful !== true);
    check(failed.length === 0, `${failed.length} publishes failed, e.g. ${json(failed[0])}`);
    await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.last, "the last message", 4 * WAIT_MS)));
    // A duplicate would travel the same ordered path as the messages: it arrives before a
    // barrier published after them.
    await publisher.publish(channel, { barrier: true });
    await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.barrier, "the barrier")));
    const numbered = (inbox) => inbox.data.filter((data) => !data.barrier).map((data) => data.seq);
    return {
        channel,
        count,
        received: Object.fromEntries(nodeIds.map((nodeId, i) => [nodeId, numbered(inboxes[i])])),
        transports: subscribers.map((client) => client.negotiatedTransport),
    };
}

/**
 * Per-user delivery: alice on node1 and node3, bob on node2; bob sends to alice through the
 * /service/user/send demo service on node2; a last message to bob is the barrier.
 */
async function users(ctx, { transport, count = 5 }) {
    const specs = [["alice@node1", "alice", "node1"], ["alice@node3", "alice", "node3"], ["bob@node2", "bob", "node2"]];
    const clients = await Promise.all(specs.map(([name, , nodeId]) =>
        ctx.connect(name, { url: ctx.node(nodeId), transport })));
    const inboxes = clients.map((client) => client.listen("/private"));
    const binds = await Promise.all(clients.map((client, i) => client.call("user/bind", { user: specs[i][1] })));
    const bob = clients[2];
    const sends = [];
    for (let n = 0; n < count; ++n) {
        sends.push(await bob.call("user/send", { user: "alice", channel: "/private", data: { n, to: "alice" } }));
    }
    const nobody = await bob.call("user/send", { user: "nobody-here", channel: "/private", data: { n: -1 } });
    await bob.call("user/send", { user: "bob", channel: "/private", data: { barrier: true, to: "bob" } });
    await Promise.all(inboxes.slice(0, 2).map((inbox) => inbox.untilData((data) => data.n === count - 1, "alice's last message")));
    await inboxes[2].untilData((data) => data.barrier, "bob's barrier");
    return {
        binds: binds.map((reply) => reply.data ?? null),
        sends: sends.map((reply) => reply.data ?? null),
        sendToNobody: nobody.data ?? null,
        received: Object.fromEntries(specs.map(([name], i) => [name, inboxes[i].messages.map((m) => ({ channel: m.channel, data: m.data }))])),
    };
}

/**
 * Stickiness through HAProxy: two long-polling clients (roundrobin puts them on different
 * nodes) talk to each other for many /meta/connect cycles; every request of a client must
 * reach one node, seen as its SRV cookie (set once) and as /health asked with its cookies.
 */
async function sticky(ctx, { rounds = 10 }) {
    const channel = ctx.channel("/chat/sticky");
    const names = ["lp-a", "lp-b"];
    const clients = [];
    for (const name of names) {
        clients.push(await ctx.connect(name, { url: ctx.config.lb, transport: "long-polling" }));
    }
    const healthBefore = await Promise.all(clients.map((client) => client.health()));
    const inboxes = await Promise.all(clients.map((client) => client.subscribe(channel)));
    for (let round = 0; round < rounds; ++round) {
        const client = clients[round % 2];
        await client.publish(channel, { round, from: client.name });
        // Each delivery completes the held connects: one more connect cycle per round.
        await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.round === round, `round ${round}`)));
    }
    const healthAfter = await Promise.all(clients.map((client) => client.health()));
    return {
        channel,
        rounds,
        clients: Object.fromEntries(clients.map((client, i) => [client.name, {
            srvCookie: client.lbNode,
            srvSetCookies: client.setCookies("SRV"),
            browserSetCookies: client.setCookies("BAYEUX_BROWSER").length,
            healthNodes: [healthBefore[i].node, healthAfter[i].node],
            healthStatus: [healthBefore[i].status, healthAfter[i].status],
            handshakeRequests: client.tap.requests("/meta/handshake").length,
            connectRequests: client.tap.requests("/meta/connect").length,
            successfulConnects: client.connects.data.filter((ok) => ok === true).length,
            failedConnects: client.failedConnects(),
            transport: client.negotiatedTransport,
            received: inboxes[i].data.map((data) => data.round),
        }])),
    };
}

/**
 * A subscriber of a durable channel that survives losing its node, as an application would
 * write it: (re)subscribe whenever a handshake succeeds; the replay extension sends the last
 * replayId seen, so the server replays what was missed.
 */
class DurableSubscriber extends Condition {
    events = [];
    handshakes = [];
    subscribes = [];

    constructor(ctx, name, url, transport, channel, node = null) {
        super();
        this.name = name;
        this.channel = channel;
        this.client = ctx.client(name, { url, transport, replay: true });
        if (node) {
            // As if HAProxy had placed this browser on `node` before: deterministic placement.
            cookieJar(name).set("SRV", `SRV=${node}`);
        }
        this.client.cometd.addListener("/meta/handshake", (reply) => {
            this.handshakes.push({ successful: reply.successful, clientId: reply.clientId ?? null, at: now(), error: reply.error ?? null });
            if (reply.successful) {
                this.client.cometd.subscribe(channel, this.#onEvent, (subscribeReply) => {
                    this.subscribes.push({ successful: subscribeReply.successful, error: subscribeReply.error ?? null, at: now() });
                    this.notify();
                });
            }
            this.notify();
        });
    }

    #onEvent = (message) => {
        if (message.data !== undefined) {
            this.events.push({ replayId: message.data.event?.replayId ?? null, seq: message.data.seq, at: now() });
            this.notify();
        }
    };

    async start() {
        this.client.cometd.handshake();
        await this.until(() => this.subscribes.some((s) => s.successful),
            () => `${this.name}: the first successful subscription (handshakes ${json(this.handshakes)}, subscribes ${json(this.subscribes)})`);
    }

    get lastReplayId() {
        return this.events.length ? this.events[this.events.length - 1].replayId : null;
    }

    report(killedAt) {
        const since = (at) => (at === null || at === undefined ? null : Math.round(at - killedAt));
        const before = this.events.filter((e) => e.at < killedAt);
        const after = this.events.filter((e) => e.at >= killedAt);
        const resubscribed = this.subscribes.find((s) => s.successful && s.at >= killedAt);
        return {
            transport: this.client.transport,
            srvSetCookies: this.client.setCookies("SRV"),
            replayIds: this.events.map((e) => e.replayId),
            seqs: this.events.map((e) => e.seq),
            receivedBeforeKill: before.length,
            lastBeforeKillMs: before.length ? since(before[before.length - 1].at) : null,
            firstAfterKillMs: after.length ? since(after[0].at) : null,
            handshakes: this.handshakes.map((h) => ({ ...h, at: since(h.at) })),
            subscribes: this.subscribes.map((s) => ({ ...s, at: since(s.at) })),
            resubscribedMs: resubscribed ? since(resubscribed.at) : null,
            subscribeReplayExt: this.client.tap.requests("/meta/subscribe").map((m) => m.ext?.replay ?? null),
            failedConnects: this.client.failedConnects(),
            transportAfter: this.client.negotiatedTransport,
        };
    }
}

/**
 * Kill a node mid-stream. Subscribers reach the cluster through HAProxy (config.subscribers:
 * [[name, transport, node], ...]: node, if given, is the SRV cookie the client starts with, so
 * HAProxy places it there); the publisher is connected straight to config.publisherNode and
 * publishes config.count numbered events on a durable channel, one every config.paceMs.
 * Once every subscriber has config.killAfter events the script prints KILL_NOW; the driver
 * SIGKILLs a node and answers "KILLED <node>". The run ends when every subscriber has the
 * last event (or WAIT_MS * 3 after the last publish).
 */
async function failover(ctx, { subscribers, publisherNode = "node1", count = 300, paceMs = 15, killAfter = 100 }) {
    const channel = ctx.channel("/events/stream");
    const subs = subscribers.map(([name, transport, node]) => new DurableSubscriber(ctx, name, ctx.config.lb, transport, channel, node));
    await Promise.all(subs.map((sub) => sub.start()));
    const publisher = await ctx.connect("publisher", { url: ctx.node(publisherNode), transport: "websocket", replay: true });
    // The publisher's own subscription is the reference: replayId of every event, in order.
    const reference = await publisher.subscribe(channel);
    const health = await Promise.all(subs.map((sub) => sub.client.health()));
    driver.say(`NODES ${json(Object.fromEntries(subs.map((sub, i) => [sub.name, { srv: sub.client.lbNode, health: health[i].node }])))}`);
    await driver.expect("START");

    const startedAt = now();
    let killedAt = null;
    let victim = null;
    const publishing = (async () => {
        const acks = [];
        for (let seq = 0; seq < count; ++seq) {
            acks.push(publisher.publishRaw(channel, { seq }, 4 * WAIT_MS));
            await sleep(paceMs);
        }
        return Promise.all(acks);
    })();
    await Promise.all(subs.map((sub) => sub.until(() => sub.events.length >= killAfter,
        () => `${sub.name}: ${killAfter} events before the kill (got ${sub.events.length})`)));
    driver.say("KILL_NOW");
    victim = await driver.expect("KILLED");
    killedAt = now();

    const acks = await publishing;
    const publishedAt = now();
    const failedPublishes = acks.filter((ack) => ack.successful !== true);
    check(failedPublishes.length === 0, `${failedPublishes.length} publishes failed, e.g. ${json(failedPublishes[0])}`);
    await reference.until(() => reference.messages.length >= count,
        () => `the publisher's own copy of all ${count} events (got ${reference.messages.length})`);
    const lastReplayId = reference.messages[reference.messages.length - 1].data.event.replayId;
    await Promise.all(subs.map((sub) => sub.until(() => sub.events.some((e) => e.replayId === lastReplayId),
        () => `${sub.name}: the last event, replayId ${lastReplayId} (got ${sub.events.length}, last ${sub.lastReplayId}; ${json(sub.report(killedAt)).slice(0, 1500)})`,
        3 * WAIT_MS)));
    // Let anything still in flight (a duplicate, say) arrive before counting.
    await sleep(300);
    return {
        channel,
        count,
        victim,
        publisherNode,
        killedAtMs: Math.round(killedAt - startedAt),
        publishMs: Math.round(publishedAt - startedAt),
        reference: {
            replayIds: reference.messages.map((m) => m.data.event.replayId),
            seqs: reference.messages.map((m) => m.data.seq),
        },
        subscribers: Object.fromEntries(subs.map((sub) => [sub.name, sub.report(killedAt)])),
    };
}

/**
 * Redis goes away and comes back. One client per node (connected to the node itself), all
 * subscribed to one channel. READY -> driver kills Redis and waits for every /health to say
 * 503 -> "REDIS_DOWN": publishes and a subscribe must fail with 503::engine_unavailable ->
 * CHECKED -> driver restarts Redis and waits for /health 200 -> "REDIS_UP": broadcast from
 * every node must reach every client again.
 */
async function redisOutage(ctx, { transports = ["websocket", "long-polling", "websocket"], count = 20 }) {
    const channel = ctx.channel("/chat/y");
    const nodeIds = Object.keys(ctx.config.nodes);
    const clients = await Promise.all(nodeIds.map((nodeId, i) =>
        ctx.connect(`c-${nodeId}`, { url: ctx.node(nodeId), transport: transports[i % transports.length] })));
    const inboxes = await Promise.all(clients.map((client) => client.subscribe(channel)));
    await clients[0].publish(channel, { phase: "before" });
    await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.phase === "before", "the message before")));
    driver.say("READY");

    await driver.expect("REDIS_DOWN");
    const duringPublishes = await Promise.all(clients.map((client) => client.publishRaw(channel, { phase: "during" })));
    const duringSubscribe = await clients[1].subscribeRaw(ctx.channel("/chat/during"));
    const duringBind = await new Promise((resolve) =>
        clients[2].cometd.remoteCall("user/bind", { user: "carol" }, WAIT_MS, (reply) => resolve(copy(reply))));
    const connectsBeforeUp = clients.map((client) => client.connects.messages.length);
    driver.say("CHECKED");

    await driver.expect("REDIS_UP");
    const acks = [];
    for (let seq = 0; seq < count; ++seq) {
        const client = clients[seq % clients.length];
        acks.push(await client.publishRaw(channel, { phase: "after", seq, from: nodeIds[seq % clients.length] }));
    }
    const failed = acks.filter((ack) => ack.successful !== true);
    check(failed.length === 0, `${failed.length} publishes after Redis came back failed, e.g. ${json(failed[0])}`);
    await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.seq === count - 1, "the last message after")));

    // c-node3 tried to bind user carol while Redis was down (it failed): once Redis is back,
    // is carol reachable from node1? And after binding again, as an application that retries
    // would? A broadcast from node1 right after each message to carol takes the same path
    // (node1's writer -> Redis -> node3's subscriber connection), so it arrives after it.
    const [sender, , carol] = clients;
    const privateInbox = carol.listen("/private");
    const barrier = await carol.subscribe(ctx.channel("/chat/barrier"));
    const reachable = [];
    for (const attempt of ["after the failed bind", "after binding again"]) {
        let rebind = null;
        if (attempt === "after binding again") {
            rebind = (await carol.call("user/bind", { user: "carol" })).data ?? null;
        }
        await sender.call("user/send", { user: "carol", channel: "/private", data: { to: "carol", attempt } });
        await sender.publish(ctx.channel("/chat/barrier"), { attempt });
        await barrier.untilData((data) => data.attempt === attempt, `the barrier ${attempt}`);
        reachable.push({ attempt, rebind, carolReceived: privateInbox.data.some((data) => data.attempt === attempt) });
    }
    return {
        userBoundDuringOutage: reachable,
        channel,
        count,
        during: {
            publishes: duringPublishes.map((r) => ({ successful: r.successful, error: r.error ?? null })),
            subscribe: { successful: duringSubscribe.successful, error: duringSubscribe.error ?? null },
            bind: { successful: duringBind.successful, error: duringBind.error ?? null },
        },
        connectsDuringOutage: clients.map((client, i) => client.connects.messages.length - connectsBeforeUp[i]),
        handshakeRequests: clients.map((client) => client.tap.requests("/meta/handshake").length),
        failedConnects: Object.fromEntries(clients.map((client, i) => [nodeIds[i], client.failedConnects()])),
        received: Object.fromEntries(nodeIds.map((nodeId, i) => [nodeId, inboxes[i].data])),
        transports: clients.map((client) => client.negotiatedTransport),
    };
}

const SCENARIOS = { broadcast, users, sticky, failover, "redis-outage": redisOutage };

function exit(code, stream, text) {
    stream.write(`${text}\n`, () => process.exit(code));
}

async function main([name, configText]) {
    const scenario = SCENARIOS[name];
    let config;
    try {
        config = JSON.parse(configText ?? "");
    } catch {
        config = null;
    }
    if (!scenario || !config || typeof config !== "object") {
        exit(2, process.stderr, `usage: node multinode.mjs <${Object.keys(SCENARIOS).join("|")}> '<json config>'`);
        return;
    }
    setTimeout(() => exit(3, process.stderr, `FAIL ${name}: hard timeout after ${HARD_TIMEOUT_MS} ms`), HARD_TIMEOUT_MS);
    const ctx = new Context(config);
    try {
        const result = await scenario(ctx, config);
        await ctx.closeAll();
        exit(0, process.stdout, json({ scenario: name, ok: true, ...result }));
    } catch (error) {
        const reason = error instanceof ScenarioFailure ? error.message : error.stack;
        const wire = ctx.wireTails();
        await ctx.closeAll();
        exit(1, process.stderr, `FAIL ${name}: ${reason}\nlast wire messages per client:\n${wire}`);
    }
}

await main(process.argv.slice(2));
