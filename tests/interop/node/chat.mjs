#!/usr/bin/env node
// A GMS Chat API v2 customer on the official CometD JavaScript client.
//
//   node chat.mjs <flow|reconnect> <url> <websocket|long-polling>
//
// <url> is the server's CometD URL (e.g. http://127.0.0.1:8080/genesys/cometd). The agent side
// is played by the driver (tests/interop/test_chat_js_client.py), which talks to this script by
// lines: the script prints "<STEP> <json>" on stdout when the driver has something to do, and
// waits for a "<STEP>" line on stdin when it must wait for the driver. The last stdout line is
// the JSON result; failures go to stderr with the last wire messages, and the exit code is 1
// (2: bad usage, 3: hard timeout).
//
//   flow:      handshake, requestChat, sendMessage, (driver: an agent joins and answers),
//              disconnect. The client only adds a listener on the chat channel.
//   reconnect: the client subscribes to the chat channel on every handshake (the documented
//              CometD pattern). After the agent's first message the driver forgets the client's
//              Bayeux session; the client re-handshakes, asks for the events since its last
//              nextPosition, then gets the agent's next message as a notification.

import { Console } from "node:console";
import { createInterface } from "node:readline";
import { adapt } from "cometd-nodejs-client";

adapt();
window.console = new Console({ stdout: process.stderr, stderr: process.stderr });
const { CometD } = await import("cometd");

const CHANNEL = "/service/chatV2/customer-support";
const WAIT_MS = Number(process.env.SCENARIO_WAIT_MS || 10000);
const HARD_TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 30000);

class Failure extends Error {}

function check(condition, message) {
    if (!condition) {
        throw new Failure(message);
    }
}

const json = JSON.stringify;

/** Plain JSON, without the transport objects the client attaches to some replies. */
function copy(message) {
    return JSON.parse(json(message, (key, value) => (key === "transport" ? undefined : value)));
}

// -- lines from the driver ------------------------------------------------------------------
const lines = [];
let lineArrived = () => {};
createInterface({ input: process.stdin }).on("line", (line) => {
    lines.push(line.trim());
    lineArrived();
});

async function waitForLine(expected) {
    const deadline = Date.now() + WAIT_MS;
    while (!lines.includes(expected)) {
        check(Date.now() < deadline, `timed out waiting for "${expected}" on stdin`);
        await new Promise((resolve) => {
            lineArrived = resolve;
            setTimeout(resolve, 100);
        });
    }
}

function step(name, facts = {}) {
    process.stdout.write(`${name} ${json(facts)}\n`);
}

// -- the customer ---------------------------------------------------------------------------
class Customer {
    notifications = []; // data of every message received on the chat channel, in order
    handshakes = [];
    wire = [];
    #waiters = [];

    constructor(url, transport) {
        this.transport = transport;
        this.cometd = new CometD();
        if (transport === "long-polling") {
            this.cometd.unregisterTransport("websocket");
        }
        this.cometd.registerExtension("wiretap", {
            incoming: (message) => this.#tap("<-", message),
            outgoing: (message) => this.#tap("->", message),
        });
        this.cometd.configure({ url, logLevel: "warn" });
        this.cometd.addListener("/meta/handshake", (reply) => {
            this.handshakes.push(copy(reply));
            this.#notify();
        });
    }

    get clientId() {
        return this.cometd.getClientId();
    }

    receive = (message) => {
        this.notifications.push(copy(message.data));
        this.#notify();
    };

    /** GMS's first pattern: a listener only, no subscription. */
    listen() {
        this.cometd.addListener(CHANNEL, this.receive);
    }

    /** GMS's second pattern: subscribe inside the handshake listener, again on re-handshakes. */
    subscribeOnHandshake() {
        this.cometd.addListener("/meta/handshake", (reply) => {
            if (reply.successful) {
                this.cometd.batch(() => this.cometd.subscribe(CHANNEL, this.receive));
            }
        });
    }

    until(condition, what) {
        if (condition()) {
            return Promise.resolve();
        }
        return new Promise((resolve, reject) => {
            const waiter = { condition, resolve };
            this.#waiters.push(waiter);
            setTimeout(() => {
                this.#waiters = this.#waiters.filter((other) => other !== waiter);
                reject(new Failure(`timed out waiting for ${what}; got ${json(this.notifications)}`));
            }, WAIT_MS);
        });
    }

    async handshake() {
        const reply = await new Promise((resolve) => this.cometd.handshake(resolve));
        check(reply.successful === true, `handshake failed: ${json(copy(reply))}`);
        check(this.cometd.getTransport().type === this.transport,
            `transport is ${this.cometd.getTransport().type}, expected ${this.transport}`);
    }

    /** Publishes one operation; resolves with its Bayeux acknowledgement and the chat
     * notification that answers it (the next one to arrive). */
    async operation(data) {
        const count = this.notifications.length;
        const ack = await new Promise((resolve) => this.cometd.publish(CHANNEL, data, resolve));
        check(ack.successful === true, `publish of ${data.operation} failed: ${json(copy(ack))}`);
        await this.until(() => this.notifications.length > count, `the reply to ${data.operation}`);
        return { ack: { successful: ack.successful, channel: ack.channel }, reply: this.notifications[count] };
    }

    /** The first notification carrying an event with this text. */
    async event(text) {
        const carries = (data) => (data.messages ?? []).some((event) => event.text === text);
        await this.until(() => this.notifications.some(carries), `an event with text "${text}"`);
        return this.notifications.find(carries);
    }

    async close() {
        if (!this.cometd.isDisconnected()) {
            await new Promise((resolve) => this.cometd.disconnect(resolve));
        }
    }

    #notify() {
        this.#waiters = this.#waiters.filter((waiter) => !(waiter.condition() && (waiter.resolve(), true)));
    }

    #tap(direction, message) {
        this.wire.push(`${direction} ${json(copy(message))}`);
        return message;
    }
}

// -- scenarios ------------------------------------------------------------------------------
async function flow(customer) {
    customer.listen();
    await customer.handshake();
    const requested = await customer.operation({ operation: "requestChat", nickname: "Joan", subject: "interop" });
    const secureKey = requested.reply.secureKey;
    const sent = await customer.operation({ operation: "sendMessage", secureKey, message: "I have a question" });
    step("SENT", { secureKey, clientId: customer.clientId });
    await customer.event("How can I help?");
    const left = await customer.operation({ operation: "disconnect", secureKey });
    return { acks: [requested.ack, sent.ack, left.ack], replies: [requested.reply, sent.reply, left.reply] };
}

async function reconnect(customer) {
    customer.subscribeOnHandshake();
    await customer.handshake();
    const requested = await customer.operation({ operation: "requestChat", nickname: "Joan" });
    const secureKey = requested.reply.secureKey;
    const firstClientId = customer.clientId;
    step("CHAT", { secureKey, clientId: firstClientId });
    const seen = await customer.event("first");
    step("SEEN", { nextPosition: seen.nextPosition });
    await waitForLine("DROPPED");
    await customer.until(() => customer.handshakes.some((h) => h.successful && h.clientId !== firstClientId),
        "a new successful handshake");
    const resumed = await customer.operation({
        operation: "requestNotifications", secureKey, transcriptPosition: String(seen.nextPosition),
    });
    step("RESUMED", { clientId: customer.clientId });
    const fourth = await customer.event("fourth");
    const left = await customer.operation({ operation: "disconnect", secureKey });
    return {
        clientIds: [firstClientId, customer.clientId],
        handshakes: customer.handshakes.map((h) => ({ successful: h.successful, clientId: h.clientId ?? null })),
        resumed: resumed.reply,
        fourth,
        left: left.reply,
    };
}

const SCENARIOS = { flow, reconnect };
const TRANSPORTS = ["websocket", "long-polling"];

function exit(code, stream, text) {
    stream.write(`${text}\n`, () => process.exit(code));
}

async function main([name, url, transport]) {
    const scenario = SCENARIOS[name];
    if (!scenario || !url || !TRANSPORTS.includes(transport)) {
        exit(2, process.stderr, `usage: node chat.mjs <${Object.keys(SCENARIOS).join("|")}> <url> <${TRANSPORTS.join("|")}>`);
        return;
    }
    setTimeout(() => exit(3, process.stderr, `FAIL ${name} [${transport}]: hard timeout`), HARD_TIMEOUT_MS);
    const customer = new Customer(url, transport);
    try {
        const result = await scenario(customer);
        const negotiated = customer.cometd.getTransport().type;
        await customer.close();
        exit(0, process.stdout, json({
            scenario: name, transport: negotiated, ok: true, notifications: customer.notifications, ...result,
        }));
    } catch (error) {
        const reason = error instanceof Failure ? error.message : error.stack;
        await customer.close().catch(() => undefined);
        exit(1, process.stderr, `FAIL ${name} [${transport}]: ${reason}\nlast wire messages:\n${customer.wire.slice(-25).join("\n")}`);
    }
}

await main(process.argv.slice(2));
