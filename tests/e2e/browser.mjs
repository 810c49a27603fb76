#!/usr/bin/env node
// The customer chat page (/chat) and the agent desk (/desk) in a real headless Chromium
// (Debian's chromium, driven by playwright-core), against a running gms-server.
//
//   node browser.mjs <scenario> <base url> <agent> <password> [screenshot dir]
//
// Scenarios (each prints one JSON line of facts on stdout for tests/e2e/test_browser.py, and
// exits 1 with the reason and both pages' text on stderr when a step fails):
//   conversation: a customer and an agent chat both ways with typing indicators; the agent
//                 reloads the desk mid-chat; the customer's network drops and comes back;
//                 a second customer's chat runs beside the first; the agent completes both.
//   transfer:     (needs a second agent, <agent>2 with the same password) a wrong password
//                 is refused; the agent transfers a chat to the other agent, who accepts it
//                 and answers the customer.
//   controls:     (the same two agents) one rejects an invitation, gets it again as the only
//                 Ready agent, rejects it again and the other gets it; that one places the
//                 chat on hold and releases it, then sends a link; the controls shown follow
//                 the chat's capabilities; a desk whose session has ended goes back to its
//                 log-in form on a reload, and logs in again.
// With a screenshot dir, PNGs of both pages mid-chat are written there (docs/screenshots).
//
// Environment: CHROMIUM (default /usr/bin/chromium), E2E_WAIT_MS (default 10000) bounds each
// wait for something to show on a page.

import { createServer, connect } from "node:net";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT_MS = Number(process.env.E2E_WAIT_MS || 10000);
const HARD_TIMEOUT_MS = 6 * WAIT_MS;
const LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

class Failure extends Error {}

function check(condition, message) {
    if (!condition) {
        throw new Failure(message);
    }
}

function sameList(actual, expected, what) {
    check(JSON.stringify(actual) === JSON.stringify(expected),
        `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// -- a network that can drop ----------------------------------------------------------------------

/**
 * A TCP relay in front of the server, for one customer's browser context: drop() resets every
 * connection through it and refuses new ones until restore(). Playwright's setOffline() alone
 * would leave open websockets running (it only fails new requests), so the relay cuts them.
 */
class Network {
    #sockets = new Set();
    #down = false;

    constructor(target) {
        this.target = new URL(target);
        this.server = createServer((socket) => this.#relay(socket));
    }

    async start() {
        await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
        return `http://127.0.0.1:${this.server.address().port}`;
    }

    #relay(socket) {
        if (this.#down) {
            socket.resetAndDestroy();
            return;
        }
        const upstream = connect(Number(this.target.port), this.target.hostname);
        for (const [from, to] of [[socket, upstream], [upstream, socket]]) {
            this.#sockets.add(from);
            from.pipe(to);
            from.on("error", () => to.destroy());
            from.on("close", () => {
                this.#sockets.delete(from);
                to.destroy();
            });
        }
    }

    drop() {
        this.#down = true;
        for (const socket of this.#sockets) {
            socket.resetAndDestroy();
        }
    }

    restore() {
        this.#down = false;
    }

    close() {
        this.drop();
        this.server.close();
    }
}

// -- the two pages -----------------------------------------------------------------------------

/** Messages shown in a transcript, in order. */
function messagesIn(locator) {
    return locator.locator("li[data-type=Message] .text").allTextContents();
}

/** Every line of a transcript (joins, leaves, messages), in order. */
function linesIn(locator) {
    return locator.locator("li").allTextContents();
}

async function until(what, condition, ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    while (!(await condition())) {
        check(Date.now() < deadline, `timed out after ${ms} ms waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
}

class CustomerPage {
    constructor(page, name) {
        this.page = page;
        this.name = name;
        this.transcript = page.getByRole("list", { name: "Transcript" });
    }

    async start(subject) {
        await this.page.getByLabel("Your name").fill(this.name);
        await this.page.getByLabel("What is it about? (optional)").fill(subject);
        await this.page.getByRole("button", { name: "Start chat" }).click();
        await this.seesLine(`${this.name} joined the chat`);
    }

    async type(text) {
        await this.page.getByLabel("Your message").pressSequentially(text, { delay: 5 });
    }

    async send(text) {
        await this.type(text);
        await this.page.getByLabel("Your message").press("Enter");
        await this.seesMessage(text);
    }

    seesLine(text) {
        return until(`"${text}" in ${this.name}'s transcript`,
            async () => (await linesIn(this.transcript)).includes(text));
    }

    seesMessage(text) {
        return until(`message "${text}" on ${this.name}'s page`,
            async () => (await messagesIn(this.transcript)).includes(text));
    }

    messages() {
        return messagesIn(this.transcript);
    }

    typing() {
        return this.page.locator("#typing").textContent();
    }

    connection() {
        return this.page.locator("#connection").textContent();
    }
}

class DeskPage {
    constructor(page, agent, password) {
        this.page = page;
        this.agent = agent;
        this.password = password;
    }

    async logIn() {
        await this.page.getByLabel("Agent name").fill(this.agent);
        await this.page.getByLabel("Password").fill(this.password);
        await this.page.getByRole("button", { name: "Log in" }).click();
        await this.page.locator("#connection", { hasText: "Connected" }).waitFor({ timeout: WAIT_MS });
    }

    /** A wrong password: the page says so (and the browser asks for nothing itself). */
    async logInWrongly() {
        await this.page.getByLabel("Agent name").fill(this.agent);
        await this.page.getByLabel("Password").fill(`${this.password}-wrong`);
        await this.page.getByRole("button", { name: "Log in" }).click();
        await this.page.locator("#status", { hasText: "Wrong agent name or password." }).waitFor();
    }

    async ready() {
        await this.page.getByRole("button", { name: "Ready", exact: true }).click();
        await this.page.locator("#agent-state", { hasText: "Ready" }).waitFor({ timeout: WAIT_MS });
    }

    async accept(customer) {
        const button = this.page.getByRole("button", { name: `Accept the chat with ${customer}` });
        await button.click({ timeout: WAIT_MS });
        await this.tab(customer).waitFor({ timeout: WAIT_MS });
    }

    tab(customer) {
        return this.page.getByRole("tab", { name: customer });
    }

    async open(customer) {
        await this.page.bringToFront(); // a background window only gets throttled frames
        await this.tab(customer).click();
        return this.panel(customer);
    }

    panel(customer) {
        return this.page.getByRole("tabpanel", { name: `Chat with ${customer}` });
    }

    transcript(customer) {
        return this.panel(customer).locator("ol.transcript");
    }

    async send(customer, text) {
        const panel = await this.open(customer);
        await panel.getByLabel("Message").pressSequentially(text, { delay: 5 });
        await panel.getByLabel("Message").press("Enter");
        await this.seesMessage(customer, text);
    }

    seesMessage(customer, text) {
        return until(`message "${text}" in the desk's chat with ${customer}`,
            async () => (await messagesIn(this.transcript(customer))).includes(text));
    }

    messages(customer) {
        return messagesIn(this.transcript(customer));
    }

    lines(customer) {
        return linesIn(this.transcript(customer));
    }

    typing(customer) {
        return this.panel(customer).locator(".typing").textContent();
    }

    /** The buttons a chat's pane shows now (they follow the chat's capabilities). */
    controls(customer) {
        return this.panel(customer).locator("button:visible").allTextContents();
    }

    chatState(customer) {
        return this.panel(customer).locator(".chat-state").textContent();
    }
}

// -- scenarios ----------------------------------------------------------------------------------

async function conversation({ browser, base, agent, password, screenshots }) {
    const facts = {};
    const desk = new DeskPage(await newPage(browser, `${base}/desk`), agent, password);
    await desk.logIn();
    await desk.ready();

    const network = new Network(base);
    closers.push(() => network.close());
    const annContext = await browser.newContext({ viewport: CUSTOMER_VIEWPORT });
    const ann = new CustomerPage(await pageIn(annContext, `${await network.start()}/chat`), "Ann");
    await ann.start("My order");
    await desk.accept("Ann");
    await ann.seesLine(`${agent} joined the chat`);

    // Both ways, with typing indicators on both sides.
    await ann.type("Hello, my parcel");
    await until("Ann's typing on the desk", async () => (await desk.typing("Ann")) === "Ann is typing…");
    await ann.page.getByLabel("Your message").press("Enter");
    await desk.seesMessage("Ann", "Hello, my parcel");
    facts.typingClearedOnMessage = (await desk.typing("Ann")) === "";
    const panel = await desk.open("Ann");
    await panel.getByLabel("Message").pressSequentially("Let me check", { delay: 5 });
    await until("the agent's typing on the customer page", async () => (await ann.typing()) === `${agent} is typing…`);
    await panel.getByLabel("Message").press("Enter");
    await ann.seesMessage("Let me check");
    await ann.send("Order 1234");
    await desk.seesMessage("Ann", "Order 1234");

    // The agent reloads the desk mid-chat: the same chat, the same lines.
    const before = await desk.lines("Ann");
    await desk.page.reload();
    await desk.page.locator("#connection", { hasText: "Connected" }).waitFor({ timeout: WAIT_MS });
    await until("the chat with Ann back after the reload",
        async () => (await desk.lines("Ann")).length >= before.length);
    facts.deskLinesBeforeReload = before;
    facts.deskLinesAfterReload = await desk.lines("Ann");
    facts.deskStateAfterReload = await desk.page.locator("#agent-state").textContent();
    await desk.send("Ann", "Still here after a reload");
    await ann.seesMessage("Still here after a reload");
    await ann.send("Good");
    await desk.seesMessage("Ann", "Good");

    // The customer reloads the page: the chat resumes with its whole transcript.
    const customerBefore = await linesIn(ann.transcript);
    await ann.page.reload();
    await until("the customer's transcript back after the reload",
        async () => (await linesIn(ann.transcript)).length >= customerBefore.length);
    facts.customerLinesBeforeReload = customerBefore;
    facts.customerLinesAfterReload = await linesIn(ann.transcript);
    await ann.send("I reloaded the page");
    await desk.seesMessage("Ann", "I reloaded the page");

    // The customer's network drops; the agent writes meanwhile; it comes back.
    await annContext.setOffline(true);
    network.drop();
    await until("the customer page to notice the network loss",
        async () => (await ann.connection()) === "Reconnecting…");
    await desk.send("Ann", "Are you there?");
    await desk.send("Ann", "Your parcel arrives tomorrow");
    facts.customerSawWhileOffline = (await ann.messages()).includes("Are you there?");
    network.restore();
    await annContext.setOffline(false);
    await ann.seesMessage("Your parcel arrives tomorrow");
    await until("the customer page to reconnect", async () => (await ann.connection()) === "Connected");
    await ann.send("Back again");
    await desk.seesMessage("Ann", "Back again");
    facts.customerTransport = await ann.page.locator("#connection").getAttribute("title");
    facts.deskTransport = await desk.page.locator("#connection").getAttribute("title");
    facts.customerMessages = await ann.messages();
    facts.deskMessages = await desk.messages("Ann");

    // A second chat beside the first: each customer sees only their own. Bob's page is a
    // window of the desk's browser (shared cookies), as when one person tries both pages.
    const bob = new CustomerPage(await pageIn(desk.page.context(), `${base}/chat`), "Bob");
    await bob.start("Billing");
    if (screenshots) {
        await desk.page.getByRole("button", { name: "Accept the chat with Bob" }).waitFor();
        await takeScreenshots(ann, desk, screenshots);
        facts.screenshots = ["customer-chat.png", "agent-desk.png"];
    }
    await desk.accept("Bob");
    await desk.send("Bob", "Hi Bob");
    await bob.seesMessage("Hi Bob");
    await bob.send("Hi, a question about my bill");
    await desk.seesMessage("Bob", "Hi, a question about my bill");
    await desk.send("Ann", "Anything else, Ann?");
    await ann.seesMessage("Anything else, Ann?");
    facts.tabs = await desk.page.getByRole("tab").allTextContents();
    facts.bobMessages = await bob.messages();
    facts.annMessagesWithBobAround = await ann.messages();

    // The agent completes both chats; the customers are told.
    for (const [customer, page] of [["Ann", ann], ["Bob", bob]]) {
        const pane = await desk.open(customer);
        await pane.getByRole("button", { name: "Complete" }).click();
        await page.page.getByText("The chat has ended.").waitFor({ timeout: WAIT_MS });
        await desk.tab(`${customer} (ended)`).waitFor({ timeout: WAIT_MS });
        await pane.getByText("You completed the chat.").waitFor({ timeout: WAIT_MS });
    }
    facts.customerAfterEnd = await ann.page.locator("#status").textContent();
    facts.customerCanStartAgain = await ann.page.getByRole("button", { name: "Start a new chat" }).isVisible();
    return facts;
}

/** Both pages mid-chat: the customer typing, the desk showing it and a waiting invitation. */
async function takeScreenshots(customer, desk, directory) {
    await desk.open(customer.name);
    await customer.type("Great, thanks!");
    await until("the customer's typing on the desk",
        async () => (await desk.typing(customer.name)) === `${customer.name} is typing…`);
    await customer.page.screenshot({ path: `${directory}/customer-chat.png` });
    await desk.page.screenshot({ path: `${directory}/agent-desk.png` });
    await customer.page.getByLabel("Your message").fill("");
}

async function transfer({ browser, base, agent, password }) {
    // The first desk long-polls, so its CometD requests carry the CSRF header.
    const first = new DeskPage(await newPage(browser, `${base}/desk?transport=long-polling`), agent, password);
    const second = new DeskPage(await newPage(browser, `${base}/desk`), `${agent}2`, password);
    await first.logIn();
    await second.logInWrongly();
    await second.logIn();
    await first.ready();
    const cara = new CustomerPage(await newPage(browser, `${base}/chat`), "Cara");
    await cara.start("Returns");
    await first.accept("Cara");
    await first.send("Cara", "Let me pass you to a colleague");
    await cara.seesMessage("Let me pass you to a colleague");
    await second.ready();
    const pane = await first.open("Cara");
    await pane.getByLabel("Transfer to").fill(second.agent);
    await pane.getByRole("button", { name: "Transfer" }).click();
    await pane.getByText(`You transferred the chat to ${second.agent}.`).waitFor({ timeout: WAIT_MS });
    await second.accept("Cara");
    await until("the transcript on the second desk",
        async () => (await second.messages("Cara")).includes("Let me pass you to a colleague"));
    await second.send("Cara", "Hello, I handle returns");
    await cara.seesMessage("Hello, I handle returns");
    await cara.send("Thanks");
    await second.seesMessage("Cara", "Thanks");
    return {
        firstDeskTransport: await first.page.locator("#connection").getAttribute("title"),
        customerMessages: await cara.messages(),
        secondDeskMessages: await second.messages("Cara"),
        customerLines: await linesIn(cara.transcript),
    };
}

async function controls({ browser, base, agent, password }) {
    const facts = {};
    const first = new DeskPage(await newPage(browser, `${base}/desk`), agent, password);
    const second = new DeskPage(await newPage(browser, `${base}/desk`), `${agent}2`, password);
    await first.logIn();
    await second.logIn();
    await first.ready();
    const dan = new CustomerPage(await newPage(browser, `${base}/chat`), "Dan");
    await dan.start("A refund");

    // Rejected by the only Ready agent, the chat is offered to it again; rejected once more
    // when another agent is Ready, it goes to that one.
    const invitation = first.page.locator("#invitations li", { hasText: "Dan" });
    const reject = invitation.getByRole("button", { name: "Reject the chat with Dan" });
    await invitation.waitFor();
    facts.invitationButtons = await invitation.getByRole("button").allTextContents();
    await reject.click(); // the page drops the invitation at once: a new one must come
    await invitation.waitFor();
    facts.firstDeskInvitationsAfterFirstReject = await first.page.locator("#invitations li").count();
    await second.ready();
    await reject.click();
    await second.accept("Dan");
    facts.firstDeskInvitationsAfterReject = await first.page.locator("#invitations li").count();
    await dan.seesLine(`${second.agent} joined the chat`);
    facts.controlsAccepted = await second.controls("Dan");
    facts.stateAccepted = await second.chatState("Dan");

    // On hold: the customer sees the agent step away, can still write; then the agent is back.
    const pane = await second.open("Dan");
    await pane.getByRole("button", { name: "Place on hold" }).click();
    await dan.seesLine(`${second.agent} put the chat on hold`);
    await second.tab("Dan (on hold)").waitFor();
    facts.controlsOnHold = await second.controls("Dan");
    facts.stateOnHold = await second.chatState("Dan");
    facts.focusOnHold = await second.page.evaluate(() => document.activeElement?.textContent);
    await dan.send("Still there?");
    await second.seesMessage("Dan", "Still there?");
    await pane.getByRole("button", { name: "Release hold" }).click();
    await dan.seesLine(`${second.agent} is back`);
    await until("the chat active again on the desk", async () => (await second.chatState("Dan")) === "Active");
    facts.controlsReleased = await second.controls("Dan");
    await second.send("Dan", "Yes, back now");
    await dan.seesMessage("Yes, back now");
    await dan.send("Good");
    await second.seesMessage("Dan", "Good");

    // A link: the customer gets it as a link opening in a new tab.
    const url = "https://example.com/refunds?order=42&lang=en";
    await pane.getByLabel("Send a link").fill(url);
    await pane.getByRole("button", { name: "Send link" }).click();
    const link = dan.transcript.getByRole("link", { name: url });
    await link.waitFor();
    facts.customerLink = {
        href: await link.getAttribute("href"),
        target: await link.getAttribute("target"),
        rel: await link.getAttribute("rel"),
    };
    facts.linkFieldAfterSending = await pane.getByLabel("Send a link").inputValue();
    facts.customerLines = await linesIn(dan.transcript);
    facts.deskLines = await second.lines("Dan");

    // The first desk's session ends (its cookie names a login the server no longer knows):
    // a reload leads to the log-in form, with no password prompt by the browser, and back in.
    await first.page.context().addCookies([{ name: "JSESSIONID", value: "ended", url: base }]);
    await first.page.reload();
    await first.page.getByRole("button", { name: "Log in" }).waitFor();
    facts.statusAfterSessionEnded = await first.page.locator("#status").textContent();
    await first.logIn();
    facts.stateAfterLoggingInAgain = await first.page.locator("#agent-state").textContent();
    return facts;
}

const SCENARIOS = { conversation, transfer, controls };

// -- running ------------------------------------------------------------------------------------

const pages = [];
const closers = [];

const CUSTOMER_VIEWPORT = { width: 560, height: 760 };
const DESK_VIEWPORT = { width: 1100, height: 900 };

/** A page in a browser context of its own (its own cookies and sessionStorage). */
async function newPage(browser, url) {
    const viewport = url.includes("/desk") ? DESK_VIEWPORT : CUSTOMER_VIEWPORT;
    return pageIn(await browser.newContext({ viewport }), url);
}

async function pageIn(context, url) {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    page.on("console", (message) => {
        if (message.type() === "error") {
            errors.push(message.text());
        }
    });
    pages.push({ page, errors });
    await page.goto(url);
    return page;
}

/** What a failure shows: each page's URL, visible text and console errors. */
async function describePages() {
    const parts = [];
    for (const { page, errors } of pages) {
        const text = await page.locator("body").innerText({ timeout: 1000 }).catch((e) => `(no text: ${e})`);
        parts.push(`--- ${page.url()}\n${text}\nconsole errors: ${JSON.stringify(errors)}`);
    }
    return parts.join("\n");
}

function finish(code, stream, text) {
    stream.write(`${text}\n`, () => process.exit(code));
}

async function main([name, base, agent, password, screenshots]) {
    const scenario = SCENARIOS[name];
    if (!scenario || !base || !agent || !password) {
        finish(2, process.stderr,
            `usage: node browser.mjs <${Object.keys(SCENARIOS).join("|")}> <base url> <agent> <password> [screenshot dir]`);
        return;
    }
    setTimeout(() => finish(3, process.stderr, `FAIL ${name}: hard timeout after ${HARD_TIMEOUT_MS} ms`),
        HARD_TIMEOUT_MS).unref();
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
    try {
        const facts = await scenario({ browser, base, agent, password, screenshots });
        facts.pageErrors = pages.flatMap(({ errors }) => errors);
        await browser.close();
        closers.forEach((close) => close());
        finish(0, process.stdout, JSON.stringify(facts));
    } catch (error) {
        const reason = error instanceof Failure ? error.message : error.stack;
        const details = await describePages();
        await browser.close().catch(() => undefined);
        closers.forEach((close) => close());
        finish(1, process.stderr, `FAIL ${name}: ${reason}\n${details}`);
    }
}

await main(process.argv.slice(2));
