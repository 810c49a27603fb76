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

import {
    Condition, Driver, WAIT_MS, WireTap, check, copy, hardTimeoutMs, json, loadCometD, runScenario, scenarioArguments,
} from "./harness.mjs";

const { CometD } = await loadCometD();

const CHANNEL = "/service/chatV2/customer-support";
const HARD_TIMEOUT_MS = hardTimeoutMs(30000);

const driver = new Driver();

function step(name, facts = {}) {
    driver.say(`${name} ${json(facts)}`);
}

// -- the customer ---------------------------------------------------------------------------
class Customer extends Condition {
    notifications = []; // data of every message received on the chat channel, in order
    handshakes = [];
    tap = new WireTap();

    constructor(url, transport) {
        super();
        this.transport = transport;
        this.cometd = new CometD();
        if (transport === "long-polling") {
            this.cometd.unregisterTransport("websocket");
        }
        this.cometd.registerExtension("wiretap", this.tap);
        this.cometd.configure({ url, logLevel: "warn" });
        this.cometd.addListener("/meta/handshake", (reply) => {
            this.handshakes.push(copy(reply));
            this.notify();
        });
    }

    get clientId() {
        return this.cometd.getClientId();
    }

    receive = (message) => {
        this.notifications.push(copy(message.data));
        this.notify();
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
        return super.until(condition, () => `${what}; got ${json(this.notifications)}`);
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
    await driver.expect("DROPPED", WAIT_MS);
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

async function main(args) {
    const parsed = scenarioArguments("chat.mjs", SCENARIOS, args);
    if (!parsed) {
        return;
    }
    const { name, entry: scenario, url, transport } = parsed;
    const customer = new Customer(url, transport);
    await runScenario({
        label: `${name} [${transport}]`,
        hardTimeout: HARD_TIMEOUT_MS,
        hardTimeoutText: "hard timeout",
        run: async () => {
            const result = await scenario(customer);
            const negotiated = customer.cometd.getTransport().type;
            return { scenario: name, transport: negotiated, ok: true, notifications: customer.notifications, ...result };
        },
        close: () => customer.close(),
        closeAfterFailure: async () => {
            await customer.close().catch(() => undefined);
            return `last wire messages:\n${customer.tap.tailLines().join("\n")}`;
        },
    });
}

await main(process.argv.slice(2));
