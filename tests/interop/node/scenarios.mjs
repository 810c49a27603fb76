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

import {
    CLIENT_HEADER, Client, Context, Driver, Inbox, WAIT_MS, hardTimeoutMs, json, loadCometD, runScenario,
    scenarioArguments,
} from "./harness.mjs";

const { AckExtension } = await loadCometD();

const HARD_TIMEOUT_MS = hardTimeoutMs(30000);

/** A client of the scenario's server and transport; it names itself in CLIENT_HEADER, for its own cookies. */
class ScenarioClient extends Client {
    constructor(name, { url, transport, ack = false }) {
        super(name, {
            url,
            transport,
            extensions: ack ? { ack: new AckExtension() } : {},
            configure: { requestHeaders: { [CLIENT_HEADER]: name } },
        });
    }
}

/** What a scenario gets: the clients it creates are checked and disconnected at the end. */
class ScenarioContext extends Context {
    constructor(url, transport) {
        super();
        this.url = url;
        this.transport = transport;
    }

    createClient(name, options = {}) {
        return new ScenarioClient(name, { url: this.url, transport: this.transport, ...options });
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

    const driver = new Driver();
    driver.say("READY");
    // No deadline of its own: the driver restarts the server meanwhile (the hard timeout bounds it).
    await driver.expect("RESTARTED", 2 * HARD_TIMEOUT_MS);

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

async function main(args) {
    const parsed = scenarioArguments("scenarios.mjs", SCENARIOS, args);
    if (!parsed) {
        return;
    }
    const { name, entry: [scenario, hardTimeout], url, transport } = parsed;
    const ctx = new ScenarioContext(url, transport);
    await runScenario({
        label: `${name} [${transport}]`,
        hardTimeout,
        run: async () => {
            const result = await scenario(ctx);
            ctx.checkTransports();
            return { scenario: name, transport, ok: true, ...result };
        },
        close: () => ctx.closeAll(),
        closeAfterFailure: () => ctx.closeAfterFailure(),
    });
}

await main(process.argv.slice(2));
