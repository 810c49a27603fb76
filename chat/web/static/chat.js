// The customer chat page: GMS Chat API v2 over CometD, with the official CometD client.
//
// One chat per page. Its secure key (and ids) live in sessionStorage, so a page reload or a
// network loss resumes it with requestNotifications + transcriptPosition: from 1 after a
// reload (the page starts empty), from the last index seen + 1 otherwise. Nothing is lost,
// and events seen twice are dropped by index. The ack extension makes the CometD session's
// own delivery reliable across dropped connections too.

import { AckExtension, CometD } from "/static/cometd/cometd.js";
import {
    Transcript, TypingNotifier, byId, showStatus, submitOnEnter, useTransportOf,
} from "/static/transcript.js";

const SERVICE = new URLSearchParams(location.search).get("service") || "customer-support";
const CHANNEL = `/service/chatV2/${SERVICE}`;
const STORAGE_KEY = `gms-chat:${SERVICE}`;
const SESSION_NOT_FOUND = 249;

const ui = {
    connection: byId("connection"),
    status: byId("status"),
    start: byId("start"),
    conversation: byId("conversation"),
    message: byId("message"),
    compose: byId("compose"),
    end: byId("end"),
    again: byId("again"),
};
const transcript = new Transcript(byId("transcript"), byId("typing"), (event) => event.from?.type === "Client");

/** The chat being resumed or held: {secureKey, chatId, userId, alias}, or null. */
let chat = loadChat();
let connected = false;
let connectionBroken = false;

function loadChat() {
    try {
        const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
        return stored && typeof stored.secureKey === "string" && stored.secureKey ? stored : null;
    } catch {
        return null;
    }
}

function saveChat() {
    if (chat === null) {
        sessionStorage.removeItem(STORAGE_KEY);
    } else {
        sessionStorage.setItem(STORAGE_KEY, JSON.stringify(chat));
    }
}

// -- CometD ---------------------------------------------------------------------------------

const cometd = new CometD();
useTransportOf(cometd);
cometd.registerExtension("ack", new AckExtension());
cometd.configure({ url: new URL("/genesys/cometd", location.href).href, logLevel: "warn" });
cometd.addListener(CHANNEL, (message) => onNotification(message.data));
cometd.addListener("/meta/handshake", (reply) => {
    if (reply.successful) {
        connectionBroken = false;
        setConnected(true);
        if (chat !== null) {
            resume(); // a new Bayeux session: bind the chat to it again
        } else if (ui.conversation.hidden) {
            showStatus(ui.status, "");
            showForm();
        }
    }
});
cometd.addListener("/meta/connect", (reply) => {
    if (cometd.isDisconnected()) {
        return;
    }
    if (!reply.successful) {
        connectionBroken = true;
        setConnected(false);
    } else if (connectionBroken) {
        // The same Bayeux session came back after a loss: ask for anything missed meanwhile.
        connectionBroken = false;
        setConnected(true);
        if (chat !== null) {
            resume();
        }
    } else {
        setConnected(true);
    }
});

function setConnected(value) {
    connected = value;
    ui.connection.textContent = value ? "Connected" : "Reconnecting…";
    ui.connection.title = `CometD over ${cometd.getTransport()?.type ?? "no transport yet"}`;
    ui.connection.classList.toggle("ready", value);
    for (const button of document.querySelectorAll("form button[type=submit]")) {
        button.disabled = !value;
    }
}

/** Publishes a chat operation; reports a failed publish (the network is down) to the user. */
function operation(name, fields = {}, onFailure = () => undefined) {
    const data = { operation: name, ...fields };
    if (chat !== null && name !== "requestChat") {
        data.secureKey = chat.secureKey;
    }
    cometd.publish(CHANNEL, data, (reply) => {
        if (!reply.successful) {
            showStatus(ui.status, "Not sent: the connection is down. Try again in a moment.", true);
            onFailure();
        }
    });
}

function resume() {
    // After a page reload the transcript on screen is empty: ask for all of it.
    const position = transcript.lastIndex === 0 ? 1 : transcript.lastIndex + 1;
    operation("requestNotifications", { transcriptPosition: position });
}

// -- notifications ----------------------------------------------------------------------------

function onNotification(data) {
    if (!data || typeof data !== "object") {
        return;
    }
    if (data.statusCode !== 0) {
        onError(data);
        return;
    }
    if (chat === null) {
        return; // a late notification about a chat this page has forgotten
    }
    if (typeof data.secureKey === "string") {
        chat.secureKey = data.secureKey;
    }
    for (const key of ["chatId", "userId", "alias"]) {
        if (typeof data[key] === "string") {
            chat[key] = data[key];
        }
    }
    transcript.add(Array.isArray(data.messages) ? data.messages : []);
    showConversation();
    if (data.chatEnded) {
        ended("The chat has ended.");
    } else {
        saveChat();
    }
}

function onError(data) {
    if (chat !== null && !chat.secureKey) {
        chat = null; // requestChat failed: there is nothing to resume
    }
    const codes = (data.errors ?? []).map((error) => error.code);
    if (chat !== null && (codes.includes(SESSION_NOT_FOUND) || data.chatEnded)) {
        if (transcript.lastIndex === 0) {
            chat = null;
            saveChat();
            showForm();
            showStatus(ui.status, "Your previous chat is over. You can start a new one.");
        } else {
            ended("The chat has ended.");
        }
        return;
    }
    const advice = (data.errors ?? []).map((error) => error.advice || `code ${error.code}`).join("; ");
    showStatus(ui.status, `The chat service refused that: ${advice || "unknown error"}.`, true);
}

function ended(text) {
    chat = null;
    saveChat();
    typing.stop();
    transcript.showTyping("");
    showStatus(ui.status, text);
    ui.compose.hidden = true;
    ui.end.hidden = true;
    ui.again.hidden = false;
    ui.again.focus();
}

// -- the page -------------------------------------------------------------------------------

function showForm() {
    ui.start.hidden = false;
    ui.conversation.hidden = true;
    byId("nickname").focus();
}

function showConversation() {
    if (ui.conversation.hidden) {
        showStatus(ui.status, "");
        ui.start.hidden = true;
        ui.conversation.hidden = false;
        ui.message.focus();
    }
}

const typing = new TypingNotifier((started) => {
    if (chat !== null && connected) {
        operation(started ? "startTyping" : "stopTyping");
    }
});

ui.start.addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(ui.start);
    const nickname = String(form.get("nickname")).trim();
    if (!nickname) {
        showStatus(ui.status, "Please tell us your name.", true);
        return;
    }
    chat = { secureKey: "" };
    showStatus(ui.status, "Starting your chat…");
    const fields = { nickname };
    for (const [name, key] of [["subject", "subject"], ["email", "emailAddress"]]) {
        const value = String(form.get(name)).trim();
        if (value) {
            fields[key] = value;
        }
    }
    operation("requestChat", fields, () => {
        chat = null;
    });
});

ui.compose.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value.trim();
    if (!text || chat === null) {
        return;
    }
    typing.stop();
    ui.message.value = "";
    showStatus(ui.status, "");
    operation("sendMessage", { message: text }, () => {
        ui.message.value = text; // keep what could not be sent
    });
});
ui.message.addEventListener("input", () => typing.keystroke());
submitOnEnter(ui.message, ui.compose);

ui.end.addEventListener("click", () => {
    if (chat !== null) {
        operation("disconnect");
    }
});

ui.again.addEventListener("click", () => {
    // One chat per CometD connection (GMS): a new chat starts on a fresh page.
    location.reload();
});

window.addEventListener("pagehide", () => typing.stop());
showStatus(ui.status, "Connecting to the chat service…");
cometd.handshake();
