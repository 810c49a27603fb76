// What the customer page and the agent desk share: a chat transcript rendered from GMS
// transcript events (deduplicated by index, as GMS clients must), the other side's typing
// indicator, a typing notifier for our own side, and small DOM helpers.
// Every text goes in with textContent: nothing a participant sends is parsed as HTML; a
// shared URL (PushUrl) becomes a link only when it parses as http(s).

/** The element with this id (throws when the page lacks it: a bug, not a runtime state). */
export function byId(id) {
    const element = document.getElementById(id);
    if (element === null) {
        throw new Error(`no element #${id}`);
    }
    return element;
}

/** A new element with a class and text. */
export function element(tag, className = "", text = "") {
    const node = document.createElement(tag);
    if (className) {
        node.className = className;
    }
    if (text) {
        node.textContent = text;
    }
    return node;
}

/**
 * `?transport=long-polling` in the page's URL keeps a CometD client off websocket (for
 * networks whose proxies break websockets, and for the tests); the client picks otherwise.
 */
export function useTransportOf(cometd) {
    if (new URLSearchParams(location.search).get("transport") === "long-polling") {
        cometd.unregisterTransport("websocket");
    }
}

/** Shows a line in a role=status element; error lines are styled as such. */
export function showStatus(node, text, error = false) {
    node.textContent = text;
    node.classList.toggle("error", error);
}

const TYPING = new Set(["TypingStarted", "TypingStopped"]);

function time(event) {
    return typeof event.utcTime === "number"
        ? new Date(event.utcTime).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : "";
}

function nickname(event) {
    return event.from?.nickname || event.from?.type || "someone";
}

function reasonForLeave(event) {
    return event.eventAttributes?.["general-properties"]?.["reason-for-leave"] ?? null;
}

/**
 * The line a transcript shows for a non-message event, or null when it shows none. `onHold`:
 * the agents who put the chat on hold (their next join is a return, not a new agent).
 */
function describe(event, onHold) {
    const who = nickname(event);
    switch (event.type) {
        case "ParticipantJoined":
            return event.from?.type === "Agent" && onHold.delete(who) ? `${who} is back` : `${who} joined the chat`;
        case "ParticipantLeft":
            if (reasonForLeave(event) === "HOLD") {
                onHold.add(who);
                return `${who} put the chat on hold`;
            }
            return `${who} left the chat`;
        case "NicknameUpdated":
            return `${who} is now called ${event.text ?? ""}`;
        case "PushUrl":
            return `${who} shared a link: `; // the link itself follows (see render)
        case "FileUploaded":
            return `${who} sent a file: ${event.text ?? ""}`;
        case "FileDeleted":
            return `${who} deleted a file: ${event.text ?? ""}`;
        case "IdleAlert":
        case "IdleClose":
        case "Notice":
        case "CustomNotice":
            return event.text ?? event.type;
        default:
            return null;
    }
}

/**
 * A shared URL as a link that opens in a new tab, or its plain text when it is not an
 * http(s) URL (the text is the sender's: never a javascript: or data: link).
 */
function link(text) {
    let url;
    try {
        url = new URL(text);
    } catch {
        return text;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
        return text;
    }
    const anchor = element("a", "", text);
    anchor.href = url.href;
    anchor.target = "_blank";
    anchor.rel = "noopener noreferrer";
    return anchor;
}

export class Transcript {
    /**
     * list: the <ol> (an aria-live region); typing: where the other side's typing shows;
     * isMine(event): whether an event comes from this page's own participant.
     */
    constructor(list, typing, isMine) {
        this.list = list;
        this.typing = typing;
        this.isMine = isMine;
        this.lastIndex = 0;
        this.seen = new Set();
        this.onHold = new Set();
    }

    /** Adds the events not seen yet (by index); returns how many visible lines it added. */
    add(events) {
        let added = 0;
        for (const event of [...events].sort((a, b) => a.index - b.index)) {
            if (typeof event.index !== "number" || this.seen.has(event.index)) {
                continue;
            }
            this.seen.add(event.index);
            this.lastIndex = Math.max(this.lastIndex, event.index);
            if (this.render(event)) {
                added += 1;
            }
        }
        if (added) {
            this.list.scrollTop = this.list.scrollHeight;
        }
        return added;
    }

    render(event) {
        const mine = this.isMine(event);
        if (TYPING.has(event.type)) {
            if (!mine) {
                this.showTyping(event.type === "TypingStarted" ? `${nickname(event)} is typing…` : "");
            }
            return false;
        }
        const item = element("li");
        item.dataset.index = String(event.index);
        item.dataset.type = event.type;
        if (event.type === "Message") {
            if (!mine) {
                this.showTyping("");
            }
            item.className = mine ? "mine" : "theirs";
            item.append(element("span", "who", `${nickname(event)} ${time(event)}`.trim()));
            item.append(element("span", "text", event.text ?? ""));
        } else {
            const line = describe(event, this.onHold);
            if (line === null) {
                return false;
            }
            if (event.type === "ParticipantLeft" && !mine) {
                this.showTyping("");
            }
            item.className = "system";
            item.textContent = line;
            if (event.type === "PushUrl") {
                item.append(link(event.text ?? ""));
            }
        }
        this.insert(item, event.index);
        return true;
    }

    /** In index order: an earlier event can arrive late (a transcript read racing a notification). */
    insert(item, index) {
        const last = this.list.lastElementChild;
        if (last === null || Number(last.dataset.index) < index) {
            this.list.append(item);
            return;
        }
        const later = [...this.list.children].find((node) => Number(node.dataset.index) > index);
        this.list.insertBefore(item, later ?? null);
    }

    showTyping(text) {
        this.typing.textContent = text;
    }

    /** Texts of the messages shown, in order (the end-to-end tests read them too). */
    messages() {
        return [...this.list.querySelectorAll("li[data-type=Message] .text")].map((node) => node.textContent);
    }
}

/**
 * Sends "started typing" on the first keystroke and "stopped" after `idleMs` without one, or
 * when the message is sent (stop()).
 */
export class TypingNotifier {
    constructor(send, idleMs = 3000) {
        this.send = send; // send(true | false)
        this.idleMs = idleMs;
        this.typing = false;
        this.timer = null;
    }

    keystroke() {
        if (!this.typing) {
            this.typing = true;
            this.send(true);
        }
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.stop(), this.idleMs);
    }

    stop() {
        clearTimeout(this.timer);
        if (this.typing) {
            this.typing = false;
            this.send(false);
        }
    }
}

/** Enter sends the form, Shift+Enter starts a new line. */
export function submitOnEnter(textarea, form) {
    textarea.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
            event.preventDefault();
            form.requestSubmit();
        }
    });
}
