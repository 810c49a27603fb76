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

import {
    Client, Condition, Context, Driver, TRANSPORTS, WAIT_MS, check, clientUrl, configureHarness, cookieJar, copy,
    hardTimeoutMs, json, loadCometD, now, runScenario, sleep, usage,
} from "./harness.mjs";

// Longer runs than scenarios.mjs: failures show more. Inboxes keep only messages with data.
configureHarness({ wireTail: 30, describeLimit: 3000, inboxLimit: 1500, dropKeys: ["transport", "xhr"], dataOnly: true });

// Every Client is a browser of its own, with its own cookie jar: the BAYEUX_BROWSER cookie of
// the server and HAProxy's SRV cookie. Each client names itself in its URL (clientUrl()), and
// its WebSocket sends and keeps cookies as a browser would.
await loadCometD({ browserWebSocket: true });

const HARD_TIMEOUT_MS = hardTimeoutMs(60000);

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

/** A client of one node or of HAProxy, with the replay extension if asked for. */
class NodeClient extends Client {
    constructor(name, { url, transport, replay = null, configure = {} }) {
        check(TRANSPORTS.includes(transport), `unknown transport ${transport}`);
        const extensions = replay ? { replay: new ReplayExtension(replay === true ? {} : replay) } : {};
        super(name, { url: clientUrl(url, name), transport, extensions, configure });
    }

    /** this.connects.data: whether each /meta/connect succeeded. */
    recordConnect(message) {
        this.connects.push({ ...message, data: message.successful });
    }

    /** The node HAProxy routes this client to: its SRV cookie (null when not through HAProxy). */
    get lbNode() {
        return this.cookie("SRV");
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

    close() {
        return super.close(3000);
    }
}

/** What a scenario gets: the clients it creates are disconnected at the end. */
class NodeContext extends Context {
    constructor(config) {
        super();
        this.config = config;
    }

    node(nodeId) {
        const url = this.config.nodes?.[nodeId];
        check(url, `no URL for ${nodeId} in the config`);
        return url;
    }

    createClient(name, options) {
        return new NodeClient(name, options);
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
    const inboxes = await Promise.all(subscribers.map(async (client) => (await client.subscribe(channel)).inbox));
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
    const inboxes = await Promise.all(clients.map(async (client) => (await client.subscribe(channel)).inbox));
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
    const { inbox: reference } = await publisher.subscribe(channel);
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
    const inboxes = await Promise.all(clients.map(async (client) => (await client.subscribe(channel)).inbox));
    await clients[0].publish(channel, { phase: "before" });
    await Promise.all(inboxes.map((inbox) => inbox.untilData((data) => data.phase === "before", "the message before")));
    driver.say("READY");

    await driver.expect("REDIS_DOWN");
    const duringPublishes = await Promise.all(clients.map((client) => client.publishRaw(channel, { phase: "during" })));
    const { reply: duringSubscribe } = await clients[1].subscribeRaw(ctx.channel("/chat/during"));
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
    const { inbox: barrier } = await carol.subscribe(ctx.channel("/chat/barrier"));
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

async function main([name, configText]) {
    const scenario = SCENARIOS[name];
    let config;
    try {
        config = JSON.parse(configText ?? "");
    } catch {
        config = null;
    }
    if (!scenario || !config || typeof config !== "object") {
        usage(`node multinode.mjs <${Object.keys(SCENARIOS).join("|")}> '<json config>'`);
        return;
    }
    const ctx = new NodeContext(config);
    await runScenario({
        label: name,
        hardTimeout: HARD_TIMEOUT_MS,
        run: async () => ({ scenario: name, ok: true, ...(await scenario(ctx, config)) }),
        close: () => ctx.closeAll(),
        closeAfterFailure: () => ctx.closeAfterFailure(),
    });
}

await main(process.argv.slice(2));
