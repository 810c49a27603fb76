#!/usr/bin/env node
// The Faye client (npm `faye`) against the GMS server: plain Bayeux, then a Chat API v2 customer.
//
//   node faye.mjs flow <url> <websocket|long-polling>
//
// <url> is the server's CometD URL (e.g. http://127.0.0.1:8080/genesys/cometd). Faye always
// handshakes over HTTP long-polling and then switches to websocket when it can open one; for
// long-polling the script disables Faye's websocket transport. As in chat.mjs, the agent is
// played by the driver (tests/test_faye_interop.py): the script prints "SENT <json>" when the
// agent should answer. The last stdout line is the JSON result; failures go to stderr with the
// last wire messages, and the exit code is 1 (2: bad usage, 3: hard timeout).
//
//   flow: subscribe to /faye/room, publish there and receive it; then, as a Faye user of GMS
//         does, subscribe to the chat channel (Faye hands a subscription's callback only the
//         data of the messages on its channel) and publish requestChat, sendMessage, (driver:
//         an agent joins and answers), disconnect; then disconnect the Bayeux session.

import faye from "faye";

import {
    Condition, Driver, WireTap, check, copy, hardTimeoutMs, json, runScenario, scenarioArguments,
} from "./harness.mjs";

const ROOM = "/faye/room";
const CHANNEL = "/service/chatV2/customer-support";
const HARD_TIMEOUT_MS = hardTimeoutMs(30000);

const driver = new Driver();

/** Received data, in order, with waits on it. */
class DataInbox extends Condition {
    data = [];

    constructor(label) {
        super();
        this.label = label;
    }

    push = (data) => {
        this.data.push(copy(data));
        this.notify();
    };

    untilCount(count, what) {
        return this.until(() => this.data.length >= count,
            () => `${what} on ${this.label} (got ${json(this.data)})`);
    }
}

class FayeCustomer {
    tap = new WireTap();
    room = new DataInbox(ROOM);
    chat = new DataInbox(CHANNEL);

    constructor(url, transport) {
        this.client = new faye.Client(url);
        if (transport === "long-polling") {
            this.client.disable("websocket");
        }
        // A Faye extension sees messages as they come off the wire and as they go onto it.
        this.client.addExtension({
            incoming: (message, callback) => callback(this.tap.incoming(message)),
            outgoing: (message, callback) => callback(this.tap.outgoing(message)),
        });
    }

    /** The connection types of the /meta/connect requests Faye sent, in order, once each. */
    connectionTypes() {
        return [...new Set(this.tap.requests("/meta/connect").map((m) => m.connectionType))];
    }

    async subscribe(channel, inbox) {
        await this.client.subscribe(channel, inbox.push);
    }

    /** Publishes one chat operation: resolves with the notification that answers it. */
    async operation(data) {
        const count = this.chat.data.length;
        await this.client.publish(CHANNEL, data);
        await this.chat.untilCount(count + 1, `the reply to ${data.operation}`);
        return this.chat.data[count];
    }

    async event(text) {
        const carries = (data) => (data.messages ?? []).some((event) => event.text === text);
        await this.chat.until(() => this.chat.data.some(carries),
            () => `an event with text "${text}" (got ${json(this.chat.data)})`);
        return this.chat.data.find(carries);
    }

    async close() {
        await this.client.disconnect();
    }
}

async function flow(customer) {
    await customer.subscribe(ROOM, customer.room);
    await customer.client.publish(ROOM, { text: "hello from faye" });
    await customer.room.untilCount(1, "our own publication");

    await customer.subscribe(CHANNEL, customer.chat);
    const requested = await customer.operation({ operation: "requestChat", nickname: "Joan" });
    const secureKey = requested.secureKey;
    check(typeof secureKey === "string", `requestChat answered no secureKey: ${json(requested)}`);
    const sent = await customer.operation({ operation: "sendMessage", secureKey, message: "I have a question" });
    driver.say(`SENT ${json({ secureKey })}`);
    await customer.event("How can I help?");
    const left = await customer.operation({ operation: "disconnect", secureKey });
    return { replies: [requested, sent, left] };
}

const SCENARIOS = { flow };

async function main(args) {
    const parsed = scenarioArguments("faye.mjs", SCENARIOS, args);
    if (!parsed) {
        return;
    }
    const { name, entry: scenario, url, transport } = parsed;
    const customer = new FayeCustomer(url, transport);
    await runScenario({
        label: `faye ${name} [${transport}]`,
        hardTimeout: HARD_TIMEOUT_MS,
        run: async () => {
            const result = await scenario(customer);
            const [handshake] = customer.tap.replies("/meta/handshake");
            return {
                scenario: name, ok: true, connectionTypes: customer.connectionTypes(),
                handshake, room: customer.room.data, notifications: customer.chat.data,
                publishReplies: customer.tap.replies(CHANNEL), ...result,
            };
        },
        close: async () => {
            await customer.close();
            const [reply] = customer.tap.replies("/meta/disconnect");
            check(reply?.successful === true, `disconnect failed: ${json(reply ?? null)}`);
        },
        closeAfterFailure: async () => {
            await customer.close().catch(() => undefined);
            return `last wire messages:\n${customer.tap.tailLines().join("\n")}`;
        },
    });
}

await main(process.argv.slice(2));
