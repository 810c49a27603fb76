// The agent desk: the agent API (/api/v2/me...) over fetch and its notifications over CometD
// (/api/v2/notifications), with the official CometD client.
//
// The server is the source of truth: after a log-in, a page reload or a new CometD session,
// the desk subscribes first and then reads the agent's state and chats (GET /api/v2/me,
// /me/chats, /me/chats/{id}); notifications that overlap are dropped by event index.
// CSRF: when the API answers X-CSRF-HEADER / X-CSRF-TOKEN, that header goes on every POST
// and on the CometD requests; without them nothing is sent.
// Every request says X-Requested-With: XMLHttpRequest, so a 401 comes without a Basic
// challenge (which would make the browser ask for a password over the page): the desk shows
// its own log-in form instead, also when the session has ended.
// A chat's controls follow its `capabilities` (data-capability in desk.html).

import { CometD } from "/static/cometd/cometd.js";
import {
    Transcript, TypingNotifier, byId, element, showStatus, submitOnEnter, useTransportOf,
} from "/static/transcript.js";

const API = "/api/v2";
const STORAGE_KEY = "gms-desk";
const NOTICE_KEY = "gms-desk-notice"; // why the log-in form shows after a reload
const SESSION_ENDED = "Your session has ended. Please log in again.";
const CHANNELS = ["/v2/me/chats", "/v2/me/channels"];

const ui = {
    who: byId("who"),
    state: byId("agent-state"),
    connection: byId("connection"),
    ready: byId("ready"),
    notReady: byId("not-ready"),
    logout: byId("logout"),
    status: byId("status"),
    login: byId("login"),
    desk: byId("desk"),
    invitations: byId("invitations"),
    noInvitations: byId("no-invitations"),
    tabs: byId("tabs"),
    panes: byId("panes"),
    noChats: byId("no-chats"),
    agentNames: byId("agent-names"),
    template: byId("chat-template"),
};

/** {agent, csrf: {header, token} | null} while logged in; kept across reloads. */
let session = loadSession();
let cometd = null;
const chats = new Map(); // chat id -> ChatPane
const invitations = new Map(); // chat id -> <li>

function loadSession() {
    try {
        const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
        return stored && typeof stored.agent === "string" ? stored : null;
    } catch {
        return null;
    }
}

function saveSession() {
    if (session === null) {
        sessionStorage.removeItem(STORAGE_KEY);
    } else {
        sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    }
}

function reportError(what, error) {
    if (error.status === 401) {
        backToLogin(SESSION_ENDED);
    } else {
        showStatus(ui.status, `${what}: ${error.message}`, true);
    }
}

// -- the agent API ------------------------------------------------------------------------------

class ApiError extends Error {
    constructor(status, body) {
        super(body?.statusMessage || `the server answered ${status}`);
        this.status = status;
    }
}

function csrfHeaders() {
    return session?.csrf ? { [session.csrf.header]: session.csrf.token } : {};
}

async function api(method, path, body = undefined, headers = {}) {
    const init = {
        method,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-Requested-With": "XMLHttpRequest", ...headers },
    };
    if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
    }
    if (method !== "GET") {
        Object.assign(init.headers, csrfHeaders());
    }
    let response;
    try {
        response = await fetch(API + path, init);
    } catch {
        throw new ApiError(0, { statusMessage: "the server cannot be reached" });
    }
    const header = response.headers.get("X-CSRF-HEADER");
    const token = response.headers.get("X-CSRF-TOKEN");
    if (session !== null && header && token) {
        session.csrf = { header, token };
        saveSession();
    }
    const data = await response.json().catch(() => null);
    if (!response.ok || data?.statusCode !== 0) {
        throw new ApiError(response.status, data);
    }
    return data;
}

function operation(path, name, fields = {}) {
    return api("POST", path, { operationName: name, ...fields });
}

function chatOperation(id, name, fields = {}) {
    return operation(`/me/chats/${encodeURIComponent(id)}`, name, fields);
}

function basic(user, password) {
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

// -- logging in and out -------------------------------------------------------------------------

ui.login.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(ui.login);
    const user = String(form.get("username")).trim();
    session = { agent: user, csrf: null };
    try {
        // One request: it checks the password and sets the session cookie.
        const data = await api("GET", "/me", undefined, { Authorization: basic(user, String(form.get("password"))) });
        if (data.user.userName !== user) {
            // The cookie of another tab's log-in wins over the password: say so.
            throw new Error(`this browser is logged in as ${data.user.userName} in another tab; log out there first`);
        }
        ui.login.reset();
        await enterDesk(data.user);
    } catch (error) {
        session = null;
        saveSession();
        showStatus(ui.status, error.status === 401 ? "Wrong agent name or password." : `Log-in failed: ${error.message}`, true);
    }
});

/** The session is over (ended by the server, or its cookie expired): a fresh page, to log in. */
function backToLogin(text) {
    cometd?.disconnect();
    session = null;
    saveSession();
    sessionStorage.setItem(NOTICE_KEY, text);
    location.reload();
}

async function enterDesk(user) {
    session.agent = user.userName;
    saveSession();
    ui.who.textContent = user.userName;
    ui.login.hidden = true;
    ui.desk.hidden = false;
    for (const node of [ui.state, ui.connection, ui.ready, ui.notReady, ui.logout]) {
        node.hidden = false;
    }
    showStatus(ui.status, "");
    loadAgentNames();
    startCometD();
}

function agentState(user) {
    return user.channels?.find((channel) => channel.channel === "chat")?.userState?.state ?? "LoggedOut";
}

function showAgentState(state) {
    ui.state.textContent = { Ready: "Ready", NotReady: "Not ready", LoggedOut: "Logged out" }[state] ?? state;
    ui.state.classList.toggle("ready", state === "Ready");
    ui.ready.disabled = state === "Ready";
    ui.notReady.disabled = state !== "Ready";
}

ui.ready.addEventListener("click", () => setState("Ready"));
ui.notReady.addEventListener("click", () => setState("NotReady"));

async function setState(state) {
    try {
        await operation("/me/channels/chat", state);
        showAgentState(state);
    } catch (error) {
        reportError("Could not change your state", error);
    }
}

ui.logout.addEventListener("click", async () => {
    try {
        await operation("/me", "EndContactCenterSession");
    } catch (error) {
        reportError("Could not log out", error);
        return;
    }
    cometd?.disconnect();
    session = null;
    saveSession();
    location.reload();
});

/** The other agents, offered in the transfer field (GET /api/v2/agents; free text if absent). */
async function loadAgentNames() {
    try {
        const data = await api("GET", "/agents");
        const options = (data.agents ?? [])
            .filter((agent) => agent.userName && agent.userName !== session.agent)
            .map((agent) => Object.assign(document.createElement("option"), {
                value: agent.userName,
                label: agent.available ? `${agent.userName} (available)` : agent.userName,
            }));
        ui.agentNames.replaceChildren(...options);
    } catch {
        // No list on this server: the agent types the name.
    }
}

// -- notifications ------------------------------------------------------------------------------

function startCometD() {
    cometd = new CometD();
    useTransportOf(cometd);
    cometd.configure({
        url: new URL(`${API}/notifications`, location.href).href,
        requestHeaders: csrfHeaders(),
        logLevel: "warn",
    });
    let broken = false;
    cometd.addListener("/meta/handshake", (reply) => {
        if (reply.successful) {
            broken = false;
            subscribeAndSync();
        } else if (reply.advice?.reconnect === "none") {
            // Denied (the client gives up): most likely the session has ended.
            checkSession();
        }
    });
    cometd.addListener("/meta/connect", (reply) => {
        if (cometd.isDisconnected()) {
            return;
        }
        showConnection(reply.successful);
        if (!reply.successful) {
            broken = true;
        } else if (broken) {
            broken = false;
            sync(); // the same session came back: catch up on what it may have missed
        }
    });
    cometd.handshake();
}

/** After a denied handshake: back to the log-in form if the session is over, else say so. */
async function checkSession() {
    try {
        await api("GET", "/me");
        showStatus(ui.status, "The desk cannot receive notifications: reload the page.", true);
    } catch (error) {
        reportError("The desk cannot receive notifications", error);
    }
}

function showConnection(connected) {
    ui.connection.textContent = connected ? "Connected" : "Reconnecting…";
    ui.connection.title = `CometD over ${cometd.getTransport()?.type ?? "no transport yet"}`;
    ui.connection.classList.toggle("ready", connected);
}

function subscribeAndSync() {
    let pending = CHANNELS.length;
    cometd.batch(() => {
        for (const channel of CHANNELS) {
            cometd.subscribe(channel, (message) => onNotification(message.data), (reply) => {
                if (!reply.successful) {
                    showStatus(ui.status, `Could not subscribe to ${channel}: ${reply.error ?? "refused"}`, true);
                } else if (--pending === 0) {
                    sync();
                }
            });
        }
    });
}

/** Reads the agent's state and chats from the server and brings the page in line. */
async function sync() {
    try {
        const { user } = await api("GET", "/me");
        if (agentState(user) === "LoggedOut") {
            // Logged out meanwhile (the server's logout timeout after a long network loss):
            // this desk is open, so the agent works on, Not ready.
            await operation("/me", "StartContactCenterSession", { channels: ["chat"] });
            user.channels = [{ channel: "chat", userState: { state: "NotReady" } }];
        }
        showAgentState(agentState(user));
        const { chats: list } = await api("GET", "/me/chats");
        const current = new Set(list.map((chat) => chat.id));
        for (const chat of list) {
            const open = chats.get(chat.id);
            onChatState(chat);
            if (open !== undefined && chat.state !== "Invited") {
                open.load(); // events of a gap between two CometD sessions
            }
        }
        for (const id of invitations.keys()) {
            if (!current.has(id)) {
                removeInvitation(id);
            }
        }
        for (const [id, pane] of chats) {
            if (!current.has(id)) {
                pane.end("This chat is no longer on your desk.");
            }
        }
    } catch (error) {
        reportError("Could not load your chats", error);
    }
}

function onNotification(data) {
    if (data?.messageType === "ChannelStateChangeMessage") {
        const chat = (data.channels ?? []).find((channel) => channel.channel === "chat");
        if (chat) {
            showAgentState(chat.userState?.state);
        }
    } else if (data?.messageType === "ChatStateChangeMessage" && data.chat?.id) {
        if (data.notificationType === "NewMessages") {
            paneFor(data.chat).add(data.messages ?? []);
        } else {
            onChatState(data.chat);
        }
    }
}

function onChatState(chat) {
    switch (chat.state) {
        case "Invited":
            addInvitation(chat);
            break;
        case "Accepted":
        case "OnHold": // still this agent's chat
            removeInvitation(chat.id);
            if (chats.get(chat.id)?.ended) {
                chats.get(chat.id).close(); // it came back (transferred back to us): a fresh pane
            }
            paneFor(chat).update(chat);
            break;
        case "Revoked":
            removeInvitation(chat.id);
            break;
        default: // Completed, or any state in which the chat is no longer ours
            removeInvitation(chat.id);
            chats.get(chat.id)?.end("The chat is over.");
    }
}

// -- invitations -----------------------------------------------------------------------------

function customerOf(chat) {
    return (chat.participants ?? []).find((party) => party.type === "Client")?.nickname || "A customer";
}

function addInvitation(chat) {
    if (invitations.has(chat.id)) {
        return;
    }
    const item = element("li");
    item.dataset.chatId = chat.id;
    const about = chat.subject ? ` about “${chat.subject}”` : "";
    item.append(element("div", "", `${customerOf(chat)} (${chat.service})${about}`));
    const buttons = element("div", "buttons");
    for (const [answer, style] of [["Accept", ""], ["Reject", "secondary"]]) {
        if (chat.capabilities?.includes(answer)) {
            const button = element("button", style, answer);
            button.type = "button";
            button.setAttribute("aria-label", `${answer} the chat with ${customerOf(chat)}`);
            button.addEventListener("click", () => answerInvitation(chat.id, answer));
            buttons.append(button);
        }
    }
    item.append(buttons);
    invitations.set(chat.id, item);
    ui.invitations.append(item);
    ui.noInvitations.hidden = true;
}

function removeInvitation(id) {
    invitations.get(id)?.remove();
    invitations.delete(id);
    ui.noInvitations.hidden = invitations.size > 0;
}

/**
 * Removes the invitation at once: after a Reject the same chat may be offered to this agent
 * again (no one else is Ready), and that new invitation can arrive before the answer.
 */
async function answerInvitation(id, answer) {
    removeInvitation(id);
    try {
        await chatOperation(id, answer);
    } catch (error) {
        reportError(`Could not ${answer.toLowerCase()} the chat`, error);
        sync(); // the invitation may still stand (or be gone): show what the server says
    }
}

// -- chats ------------------------------------------------------------------------------------

/** The chat's pane, opened (and its transcript loaded) on first sight. */
function paneFor(chat) {
    let pane = chats.get(chat.id);
    if (pane === undefined) {
        pane = new ChatPane(chat);
        chats.set(chat.id, pane);
        pane.load();
        if (chats.size === 1 || !selectedPane()) {
            pane.select();
        }
    }
    return pane;
}

function selectedPane() {
    return [...chats.values()].find((pane) => pane.selected) ?? null;
}

let paneCount = 0;

const STATE_NAMES = { Accepted: "Active", OnHold: "On hold" };

class ChatPane {
    constructor(chat) {
        this.id = chat.id;
        this.ended = false;
        this.unread = 0;
        this.state = "";
        this.capabilities = new Set();
        const key = `chat-${++paneCount}`;
        this.panel = ui.template.content.firstElementChild.cloneNode(true);
        this.panel.id = `${key}-panel`;
        this.panel.dataset.chatId = chat.id;
        this.panel.hidden = true;
        for (const input of this.panel.querySelectorAll("[data-id]")) {
            input.id = `${key}-${input.dataset.id}`;
        }
        for (const label of this.panel.querySelectorAll("label[data-for]")) {
            label.htmlFor = `${key}-${label.dataset.for}`;
        }
        this.tab = element("button");
        this.tab.type = "button";
        this.tab.id = `${key}-tab`;
        this.tab.dataset.chatId = chat.id;
        this.tab.setAttribute("role", "tab");
        this.tab.setAttribute("aria-controls", this.panel.id);
        this.tab.setAttribute("aria-selected", "false");
        this.tab.tabIndex = -1;
        this.label = element("span");
        this.badge = element("span", "badge");
        this.badge.hidden = true;
        this.tab.append(this.label, this.badge);
        this.tab.addEventListener("click", () => this.select());
        this.tab.addEventListener("keydown", (event) => moveTabFocus(event, this));

        this.transcript = new Transcript(
            this.panel.querySelector(".transcript"),
            this.panel.querySelector(".typing"),
            (event) => event.from?.type === "Agent" && event.from?.nickname === session?.agent,
        );
        this.statePill = this.panel.querySelector(".chat-state");
        this.message = this.panel.querySelector("textarea");
        this.note = this.panel.querySelector(".ended-note");
        this.typing = new TypingNotifier((started) => {
            if (this.capabilities.has(started ? "StartTyping" : "StopTyping")) {
                chatOperation(this.id, started ? "StartTyping" : "StopTyping").catch(() => undefined);
            }
        });
        this.onSubmit("form.compose", () => this.send());
        this.message.addEventListener("input", () => this.typing.keystroke());
        submitOnEnter(this.message, this.panel.querySelector("form.compose"));
        const url = this.panel.querySelector("form.send-url input");
        this.onSubmit("form.send-url", () => this.sendUrl(url));
        const target = this.panel.querySelector("form.transfer input");
        target.addEventListener("focus", loadAgentNames);
        this.onSubmit("form.transfer", () => this.transferTo(target.value.trim()));
        this.onClick(".hold", () => this.act("PlaceOnHold", "Could not place the chat on hold"));
        this.onClick(".release", () => this.act("ReleaseHold", "Could not release the hold"));
        this.onClick(".complete", () => this.complete());
        this.onClick(".close", () => this.close());

        this.update(chat);
        ui.tabs.append(this.tab);
        ui.panes.append(this.panel);
        ui.noChats.hidden = true;
    }

    onSubmit(selector, action) {
        this.panel.querySelector(selector).addEventListener("submit", (event) => {
            event.preventDefault();
            action();
        });
    }

    onClick(selector, action) {
        this.panel.querySelector(selector).addEventListener("click", action);
    }

    get selected() {
        return this.tab.getAttribute("aria-selected") === "true";
    }

    /** The chat as the server last described it: who, its state and what can be done now. */
    update(chat) {
        if (this.ended) {
            return;
        }
        this.state = chat.state ?? this.state;
        if (Array.isArray(chat.capabilities)) {
            this.capabilities = new Set(chat.capabilities);
        }
        this.describe(chat);
        this.showControls();
    }

    describe(chat) {
        const customer = customerOf(chat);
        this.customer = customer;
        this.showLabel();
        const about = chat.subject ? `, about “${chat.subject}”` : "";
        this.panel.querySelector(".about").textContent = `Chat with ${customer} (${chat.service ?? "chat"})${about}`;
        this.panel.setAttribute("aria-label", `Chat with ${customer}`);
    }

    showLabel() {
        const state = this.ended ? "ended" : this.state === "OnHold" ? "on hold" : "";
        this.label.textContent = state ? `${this.customer} (${state})` : this.customer;
        this.statePill.textContent = this.ended ? "Ended" : STATE_NAMES[this.state] ?? this.state;
        this.statePill.classList.toggle("held", !this.ended && this.state === "OnHold");
    }

    /** Each data-capability control shows only while the chat has that capability; a focused
     * control that goes (Place on hold -> Release hold) hands the focus to the first one left. */
    showControls() {
        const focused = this.panel.contains(document.activeElement) ? document.activeElement : null;
        for (const node of this.panel.querySelectorAll("[data-capability]")) {
            node.hidden = !this.capabilities.has(node.dataset.capability);
        }
        if (focused?.closest("[hidden]")) {
            const next = this.panel.querySelector("button[data-capability]:not([hidden]), button.close:not([hidden])");
            (next ?? this.panel.querySelector(".transcript")).focus();
        }
    }

    async load() {
        try {
            const { chat } = await api("GET", `/me/chats/${encodeURIComponent(this.id)}`);
            this.update(chat);
            this.add(chat.messages ?? []);
            if (chat.state === "Completed") {
                this.end("The chat is over.");
            }
        } catch (error) {
            if (error.status === 404) {
                this.end("This chat is no longer on your desk.");
            } else {
                reportError("Could not load the chat", error);
            }
        }
    }

    add(events) {
        const added = this.transcript.add(events);
        if (added && !this.selected) {
            this.unread += added;
            this.badge.textContent = String(this.unread);
            this.badge.hidden = false;
            this.badge.setAttribute("aria-label", `${this.unread} unread`);
        }
    }

    select() {
        for (const pane of chats.values()) {
            const selected = pane === this;
            pane.tab.setAttribute("aria-selected", String(selected));
            pane.tab.tabIndex = selected ? 0 : -1;
            pane.panel.hidden = !selected;
        }
        this.unread = 0;
        this.badge.hidden = true;
    }

    async send() {
        const text = this.message.value.trim();
        if (!text || this.ended) {
            return;
        }
        this.typing.stop();
        this.message.value = "";
        if (!(await this.act("SendMessage", "The message was not sent", { text }))) {
            this.message.value = text; // keep what could not be sent
        }
    }

    async sendUrl(input) {
        if (await this.act("SendUrl", "Could not send the link", { pushUrl: input.value.trim() })) {
            input.value = "";
        }
    }

    /** A chat operation; true when done. The new state (hold) comes as a notification. */
    async act(operation, failure, fields = {}) {
        try {
            await chatOperation(this.id, operation, fields);
            return true;
        } catch (error) {
            reportError(failure, error);
            return false;
        }
    }

    async transferTo(agent) {
        if (await this.act("Transfer", "Could not transfer the chat", agent ? { agent } : {})) {
            this.end(agent ? `You transferred the chat to ${agent}.` : "You sent the chat back to the queue.", true);
        }
    }

    async complete() {
        if (await this.act("Complete", "Could not complete the chat")) {
            this.end("You completed the chat.", true);
        }
    }

    /** byMe: the agent's own Transfer or Complete, whose words win over the notification's
     * (which may arrive before or after the operation's answer). */
    end(text, byMe = false) {
        if (byMe || !this.ended) {
            this.note.textContent = text;
            this.note.hidden = false;
        }
        if (this.ended) {
            return;
        }
        this.ended = true;
        this.capabilities = new Set();
        this.typing.stop();
        this.transcript.showTyping("");
        this.panel.querySelector(".close").hidden = false;
        this.showLabel();
        this.showControls();
    }

    close() {
        this.tab.remove();
        this.panel.remove();
        chats.delete(this.id);
        const next = chats.values().next().value;
        if (next) {
            next.select();
            next.tab.focus();
        }
        ui.noChats.hidden = chats.size > 0;
    }
}

/** Left/Right/Home/End move between tabs (the ARIA tabs pattern). */
function moveTabFocus(event, pane) {
    const panes = [...chats.values()];
    const at = panes.indexOf(pane);
    const target = {
        ArrowRight: panes[(at + 1) % panes.length],
        ArrowLeft: panes[(at - 1 + panes.length) % panes.length],
        Home: panes[0],
        End: panes[panes.length - 1],
    }[event.key];
    if (target) {
        event.preventDefault();
        target.select();
        target.tab.focus();
    }
}

// -- start ----------------------------------------------------------------------------------

async function start() {
    const notice = sessionStorage.getItem(NOTICE_KEY);
    sessionStorage.removeItem(NOTICE_KEY);
    if (session !== null) {
        // A reload: the session cookie still logs us in, unless the session has ended (a 401,
        // without a challenge: the browser asks nothing, this page does).
        try {
            const data = await api("GET", "/me");
            await enterDesk(data.user);
            return;
        } catch (error) {
            session = null;
            saveSession();
            showStatus(ui.status, error.status === 401 ? SESSION_ENDED : `Could not resume: ${error.message}`, error.status !== 401);
        }
    } else if (notice) {
        showStatus(ui.status, notice);
    }
    ui.login.hidden = false;
    byId("username").focus();
}

start();
