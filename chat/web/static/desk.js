// The agent desk: the agent API (/api/v2/me...) over fetch and its notifications over CometD
// (/api/v2/notifications), with the official CometD client.
//
// The server is the source of truth: after a log-in, a page reload or a new CometD session,
// the desk subscribes first and then reads the agent's state and chats (GET /api/v2/me,
// /me/chats, /me/chats/{id}); notifications that overlap are dropped by event index.
// CSRF: when the API answers X-CSRF-HEADER / X-CSRF-TOKEN, that header goes on every POST
// and on the CometD requests; without them nothing is sent.

import { CometD } from "/static/cometd/cometd.js";
import {
    Transcript, TypingNotifier, byId, element, showStatus, submitOnEnter, useTransportOf,
} from "/static/transcript.js";

const API = "/api/v2";
const STORAGE_KEY = "gms-desk";
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
    showStatus(ui.status, `${what}: ${error.message}`, true);
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

/** credentials "omit": no cookies either way (see logIn()). */
async function api(method, path, body = undefined, headers = {}, credentials = "same-origin") {
    const init = {
        method,
        credentials,
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
        const data = await logIn(basic(user, String(form.get("password"))));
        ui.login.reset();
        await enterDesk(data.user);
    } catch (error) {
        session = null;
        saveSession();
        showStatus(ui.status, error.status === 401 ? "Wrong agent name or password." : `Log-in failed: ${error.message}`, true);
    }
});

/**
 * Checks the password first without cookies: the API answers a wrong one with a Basic
 * challenge, which on a request with credentials makes the browser ask for a password itself
 * (over the page). Then the same request with cookies, which sets the session cookie.
 */
async function logIn(authorization) {
    await api("GET", "/me", undefined, { Authorization: authorization }, "omit");
    return api("GET", "/me", undefined, { Authorization: authorization });
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
        if (error.status === 401) {
            session = null;
            saveSession();
            location.reload();
            return;
        }
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
        case "OnHold": // still this agent's chat (hold is not offered on this desk)
            removeInvitation(chat.id);
            paneFor(chat);
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
    const accept = element("button", "", "Accept");
    const reject = element("button", "secondary", "Reject");
    accept.type = reject.type = "button";
    accept.setAttribute("aria-label", `Accept the chat with ${customerOf(chat)}`);
    reject.setAttribute("aria-label", `Reject the chat with ${customerOf(chat)}`);
    accept.addEventListener("click", () => answerInvitation(chat.id, "Accept"));
    reject.addEventListener("click", () => answerInvitation(chat.id, "Reject"));
    buttons.append(accept, reject);
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

async function answerInvitation(id, answer) {
    try {
        await chatOperation(id, answer);
        removeInvitation(id);
    } catch (error) {
        removeInvitation(id);
        reportError(`Could not ${answer.toLowerCase()} the chat`, error);
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

class ChatPane {
    constructor(chat) {
        this.id = chat.id;
        this.ended = false;
        this.unread = 0;
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
        this.message = this.panel.querySelector("textarea");
        this.compose = this.panel.querySelector("form.compose");
        this.transfer = this.panel.querySelector("form.transfer");
        this.note = this.panel.querySelector(".ended-note");
        this.typing = new TypingNotifier((started) => {
            if (!this.ended) {
                chatOperation(this.id, started ? "StartTyping" : "StopTyping").catch(() => undefined);
            }
        });
        this.compose.addEventListener("submit", (event) => {
            event.preventDefault();
            this.send();
        });
        this.message.addEventListener("input", () => this.typing.keystroke());
        submitOnEnter(this.message, this.compose);
        this.transfer.querySelector("input").addEventListener("focus", loadAgentNames);
        this.transfer.addEventListener("submit", (event) => {
            event.preventDefault();
            this.transferTo(this.transfer.querySelector("input").value.trim());
        });
        this.panel.querySelector(".complete").addEventListener("click", () => this.complete());
        this.panel.querySelector(".close").addEventListener("click", () => this.close());

        this.describe(chat);
        ui.tabs.append(this.tab);
        ui.panes.append(this.panel);
        ui.noChats.hidden = true;
    }

    get selected() {
        return this.tab.getAttribute("aria-selected") === "true";
    }

    describe(chat) {
        const customer = customerOf(chat);
        this.label.textContent = this.ended ? `${customer} (ended)` : customer;
        this.customer = customer;
        const about = chat.subject ? `, about “${chat.subject}”` : "";
        this.panel.querySelector(".about").textContent = `Chat with ${customer} (${chat.service ?? "chat"})${about}`;
        this.panel.setAttribute("aria-label", `Chat with ${customer}`);
    }

    async load() {
        try {
            const { chat } = await api("GET", `/me/chats/${encodeURIComponent(this.id)}`);
            this.describe(chat);
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
        try {
            await chatOperation(this.id, "SendMessage", { text });
        } catch (error) {
            this.message.value = text; // keep what could not be sent
            reportError("The message was not sent", error);
        }
    }

    async transferTo(agent) {
        try {
            await chatOperation(this.id, "Transfer", agent ? { agent } : {});
            this.end(agent ? `You transferred the chat to ${agent}.` : "You sent the chat back to the queue.", true);
        } catch (error) {
            reportError("Could not transfer the chat", error);
        }
    }

    async complete() {
        try {
            await chatOperation(this.id, "Complete");
            this.end("You completed the chat.", true);
        } catch (error) {
            reportError("Could not complete the chat", error);
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
        this.typing.stop();
        this.transcript.showTyping("");
        this.label.textContent = `${this.customer} (ended)`;
        for (const node of [this.compose, this.transfer, this.panel.querySelector(".complete")]) {
            node.hidden = true;
        }
        const close = this.panel.querySelector(".close");
        close.hidden = false;
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
    if (session !== null) {
        // A reload: the session cookie still logs us in (no password prompt).
        try {
            const data = await api("GET", "/me");
            await enterDesk(data.user);
            return;
        } catch {
            session = null;
            saveSession();
        }
    }
    ui.login.hidden = false;
    byId("username").focus();
}

start();
