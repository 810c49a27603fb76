// The harness shared by the Node scripts that drive the official CometD JavaScript client
// (scenarios.mjs, multinode.mjs, chat.mjs): loading the client into Node with a cookie jar per
// client, failures and deadlines, waiting on conditions, inboxes, wire logging, a CometD client
// and scenario context with promise-returning wrappers, lines from the driver on stdin, and the
// exit/result plumbing every script ends with.
//
// Environment: SCENARIO_WAIT_MS (default 10000) bounds each wait for a reply or a message;
// SCENARIO_TIMEOUT_MS bounds a whole run (each script has its own default: hardTimeoutMs()).

import { Console } from "node:console";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { adapt } from "cometd-nodejs-client";

export const TRANSPORTS = ["websocket", "long-polling"];
export const WAIT_MS = Number(process.env.SCENARIO_WAIT_MS || 10000);

/** SCENARIO_TIMEOUT_MS, or the script's own default. */
export function hardTimeoutMs(fallback) {
    return Number(process.env.SCENARIO_TIMEOUT_MS || fallback);
}

// What differs between the scripts (configureHarness() overrides it, before anything else runs).
const settings = {
    /** Wire messages per client a failure shows. */
    wireTail: 25,
    /** Characters of a timed-out wait's description. */
    describeLimit: 2000,
    /** Characters of an inbox's data a timed-out untilData() shows. */
    inboxLimit: Infinity,
    /** Keys copy() leaves out: the transport objects the client attaches to failures. */
    dropKeys: ["transport"],
    /** Whether inboxes keep only the messages that carry data. */
    dataOnly: false,
};

export function configureHarness(overrides) {
    Object.assign(settings, overrides);
}

// -- failures, values, time ---------------------------------------------------------------

export class ScenarioFailure extends Error {}

export function check(condition, message) {
    if (!condition) {
        throw new ScenarioFailure(message);
    }
}

export function json(value) {
    return JSON.stringify(value);
}

export function now() {
    return performance.now();
}

export function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A plain-JSON copy of a message; drops the transport objects the client attaches to failures. */
export function copy(message) {
    const seen = new WeakSet();
    return JSON.parse(JSON.stringify(message, (key, value) => {
        if (value instanceof Error) {
            return String(value);
        }
        if (typeof value === "object" && value !== null) {
            if (settings.dropKeys.includes(key) || seen.has(value)) {
                return undefined;
            }
            seen.add(value);
        }
        return value;
    }));
}

/** what: a description, or a function returning one when the deadline passes (to show the state then). */
export function withDeadline(promise, ms, what) {
    let timer;
    const expired = new Promise((_, reject) => {
        timer = setTimeout(() => {
            const description = (typeof what === "function" ? what() : what).slice(0, settings.describeLimit);
            reject(new ScenarioFailure(`timed out after ${ms} ms waiting for ${description}`));
        }, ms);
    });
    return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// -- waiting --------------------------------------------------------------------------------

/** Waits until condition() is true, re-checking whenever notify() is called. */
export class Condition {
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
export class Inbox extends Condition {
    messages = [];

    constructor(label) {
        super();
        this.label = label;
    }

    push = (message) => {
        if (!settings.dataOnly || message.data !== undefined) {
            this.messages.push(copy(message));
            this.notify();
        }
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
            () => `${what} on ${this.label} (got ${json(this.data).slice(0, settings.inboxLimit)})`, ms);
    }
}

/**
 * A pass-through extension registered first, so it sees incoming messages as they came off the
 * wire and outgoing messages as they go onto it (after every other extension ran).
 */
export class WireTap extends Condition {
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

    tail(count = settings.wireTail) {
        return this.log.slice(-count);
    }

    /** The last wire messages, one line each: "<prefix><- {...}" or "<prefix>-> {...}". */
    tailLines(prefix = "") {
        return this.tail().map(({ dir, message }) => `${prefix}${dir === "in" ? "<-" : "->"} ${json(message)}`);
    }

    #record(dir, message) {
        this.log.push({ dir, at: now(), message: copy(message) });
        this.notify();
    }

    #matching(dir, predicate) {
        return this.log.filter((entry) => entry.dir === dir && predicate(entry.message)).map((entry) => entry.message);
    }
}

// -- the CometD client in Node, a browser per client ----------------------------------------

// Every Client is a browser of its own, with its own cookie jar (for BAYEUX_BROWSER, and
// HAProxy's SRV cookie). The adapter's default jar is shared by all CometD objects in the
// process, like the tabs of one browser: then concurrent handshakes race for the browser cookie
// (the loser's session is refused with 402, as CometD's Java server does too) and long-polls
// beyond the first get "multiple-clients" advice. The adapter's cookie hooks are not told which
// client a request is for, so each client names itself: in its URL (`?client=name`, see
// clientUrl()) or in a request header (CLIENT_HEADER). A request naming neither uses the jar "".
export const CLIENT_HEADER = "X-Interop-Client";
const cookieJars = new Map();
/** Every Set-Cookie a client got, in order: {name, value, at}. */
const setCookieLogs = new Map();

/** Cookie name -> "name=value" for one client. */
export function cookieJar(client) {
    if (!cookieJars.has(client)) {
        cookieJars.set(client, new Map());
        setCookieLogs.set(client, []);
    }
    return cookieJars.get(client);
}

/** The client a URL names in its query, or null. */
function clientOf(url) {
    return new URL(url).searchParams.get("client");
}

/**
 * url with `?client=name`: CometD then sends every request, websocket upgrades included, to that
 * URL, without appending /handshake, /connect... to the path as it does for a URL without a query.
 */
export function clientUrl(url, name) {
    return `${url}${url.includes("?") ? "&" : "?"}client=${encodeURIComponent(name)}`;
}

function requestClient(uri) {
    return clientOf(uri) ?? uri.headers?.[CLIENT_HEADER] ?? "";
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

export function cookieHeader(client) {
    return [...cookieJar(client).values()].join("; ");
}

let CometD;

/**
 * Adapts the CometD client to Node, then imports it (`cometd` needs the adapted window).
 * browserWebSocket: the adapter's WebSocket sends no cookies at all; with it, a client's
 * WebSocket sends and keeps its cookies as a browser would (the client must name itself in
 * its URL: clientUrl()). Client logs go to stderr: stdout is for the driver and the result.
 */
export async function loadCometD({ browserWebSocket = false } = {}) {
    adapt({
        cookies: {
            storeCookie(uri, header, callback) {
                storeCookie(requestClient(uri), header);
                callback(null);
            },
            retrieveCookies(context, uri, callback) {
                callback(null, [...cookieJar(requestClient(uri)).values()]);
            },
        },
    });
    if (browserWebSocket) {
        /** The adapter's WebSocket (the `ws` package), with the client's cookies, like a browser's. */
        class BrowserWebSocket extends window.WebSocket {
            constructor(url, protocols) {
                const client = clientOf(url) ?? "";
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
    }
    window.console = new Console({ stdout: process.stderr, stderr: process.stderr });
    const cometd = await import("cometd");
    CometD = cometd.CometD;
    return cometd;
}

/** An official CometD client, a browser of its own, plus promise-returning wrappers around its callback API. */
export class Client {
    /**
     * extensions: name -> extension, registered after the wire tap; configure: more of the
     * client's configuration.
     */
    constructor(name, { url, transport, extensions = {}, configure = {} }) {
        this.name = name;
        this.transport = transport;
        this.url = url;
        this.cometd = new CometD(name);
        this.tap = new WireTap();
        this.cometd.registerExtension("wiretap", this.tap);
        for (const [extension, instance] of Object.entries(extensions)) {
            this.cometd.registerExtension(extension, instance);
        }
        if (transport === "long-polling") {
            this.cometd.unregisterTransport("websocket");
        }
        this.cometd.configure({ url, logLevel: "warn", ...configure });
        this.connects = new Inbox(`${name} /meta/connect`);
        this.cometd.addListener("/meta/connect", (message) => this.recordConnect(message));
        this.handshakeReply = null;
    }

    /** Keeps a /meta/connect reply (or failure) in this.connects. */
    recordConnect(message) {
        this.connects.push(message);
    }

    get clientId() {
        return this.cometd.getClientId();
    }

    /** The Cookie header this client's HTTP requests carry. */
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
     * Subscribes; resolves with {subscription, inbox, reply} once the server replied, successful
     * or not. Messages go to the given inbox; only messages with data are kept: the client also
     * notifies a "/**" subscription of its own /meta/* replies.
     */
    async subscribeRaw(channel, inbox = new Inbox(`${this.name} ${channel}`)) {
        let subscription;
        const onMessage = (message) => message.data !== undefined && inbox.push(message);
        const reply = await this.#request(`/meta/subscribe ${channel}`, (callback) => {
            subscription = this.cometd.subscribe(channel, onMessage, callback);
        });
        return { subscription, inbox, reply };
    }

    /** subscribeRaw(), which the server must acknowledge. */
    async subscribe(channel, inbox) {
        const subscribed = await this.subscribeRaw(channel, inbox);
        check(subscribed.reply.successful === true,
            `${this.name}: subscribe to ${channel} failed: ${json(subscribed.reply)}`);
        return subscribed;
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

    /** Resolves with the server's acknowledgement (a reply without data), successful or not. */
    publishRaw(channel, data, timeout = WAIT_MS) {
        return this.#request(`publish acknowledgement on ${channel}`,
            (callback) => this.cometd.publish(channel, data, callback), timeout);
    }

    /** publishRaw(), which the server must acknowledge. */
    async publish(channel, data, timeout = WAIT_MS) {
        const reply = await this.publishRaw(channel, data, timeout);
        check(reply.successful === true, `${this.name}: publish to ${channel} failed: ${json(reply)}`);
        return reply;
    }

    /**
     * A CometD remote call, a publish on /service/<target> whose reply carries data; resolves
     * with the reply. The client itself fails the call with 406::timeout after WAIT_MS.
     */
    remoteCall(target, data) {
        return this.#request(`remote call ${target}`,
            (callback) => this.cometd.remoteCall(target, data, WAIT_MS, callback), 2 * WAIT_MS);
    }

    /** remoteCall(), which must succeed. */
    async call(target, data) {
        const reply = await this.remoteCall(target, data);
        check(reply.successful === true, `${this.name}: remote call ${target} failed: ${json(reply)}`);
        return reply;
    }

    disconnect(timeout = WAIT_MS) {
        return this.#request("/meta/disconnect", (callback) => this.cometd.disconnect(callback), timeout);
    }

    /** Best-effort disconnect at the end of a scenario; never throws. */
    async close(timeout = WAIT_MS) {
        if (!this.cometd.isDisconnected()) {
            await this.disconnect(timeout).catch(() => undefined);
        }
    }

    #request(what, send, timeout = WAIT_MS) {
        return withDeadline(new Promise((resolve) => send((reply) => resolve(copy(reply)))),
            timeout, `${this.name}: reply to ${what}`);
    }
}

/** What a scenario gets: the clients it creates (createClient()) are disconnected at the end. */
export class Context {
    clients = [];
    #id = `${process.pid.toString(36)}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

    /** A channel name no other run uses, e.g. /chat/room-lq3x9a. */
    channel(prefix) {
        return `${prefix}-${this.#id}`;
    }

    client(name, options) {
        const client = this.createClient(name, options);
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

    /** The last wire messages of every client, one line each: "alice <- {...}". */
    wireTails() {
        return this.clients.flatMap((client) => client.tap.tailLines(`${client.name} `)).join("\n");
    }

    /** What a failure shows (the wire before the clients close), once they are closed. */
    async closeAfterFailure() {
        const wire = this.wireTails();
        await this.closeAll();
        return `last wire messages per client:\n${wire}`;
    }
}

// -- the driver and the end of a run -------------------------------------------------------

/** Lines from the driver on stdin, one at a time; say() writes one to stdout. */
export class Driver {
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

export function exit(code, stream, text) {
    stream.write(`${text}\n`, () => process.exit(code));
}

export function usage(text) {
    exit(2, process.stderr, `usage: ${text}`);
}

/**
 * The arguments `<scenario> <url> <transport>` of `node <script>`: {name, entry: scenarios[name],
 * url, transport}, or null once the usage line is out.
 */
export function scenarioArguments(script, scenarios, [name, url, transport]) {
    const entry = scenarios[name];
    if (!entry || !url || !TRANSPORTS.includes(transport)) {
        usage(`node ${script} <${Object.keys(scenarios).join("|")}> <url> <${TRANSPORTS.join("|")}>`);
        return null;
    }
    return { name, entry, url, transport };
}

/**
 * Runs a scenario to its exit: 0 with the result object run() resolves with as one JSON line
 * on stdout, after close(); 1 when it throws, with "FAIL <label>: <reason>" and what
 * closeAfterFailure() (which closes too) returns on stderr; 3 after hardTimeout ms.
 */
export async function runScenario({ label, hardTimeout, hardTimeoutText = `hard timeout after ${hardTimeout} ms`, run, close, closeAfterFailure }) {
    setTimeout(() => exit(3, process.stderr, `FAIL ${label}: ${hardTimeoutText}`), hardTimeout);
    try {
        const result = await run();
        await close();
        exit(0, process.stdout, json(result));
    } catch (error) {
        const reason = error instanceof ScenarioFailure ? error.message : error.stack;
        const details = await closeAfterFailure();
        exit(1, process.stderr, `FAIL ${label}: ${reason}\n${details}`);
    }
}
