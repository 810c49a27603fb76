// What the customer page and the agent desk share: a chat transcript rendered from GMS
// transcript events (deduplicated by index, as GMS clients must), the other side's typing
// indicator, a typing notifier for our own side, and small DOM helpers.
// Every text goes in with textContent: nothing a participant sends is parsed as HTML.

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

/** The line a transcript shows for a non-message event, or null when it shows none. */
function describe(event) {
    const who = nickname(event);
    switch (event.type) {
        case "ParticipantJoined":
            return `${who} joined the chat`;
        case "ParticipantLeft":
            return `${who} left the chat`;
        case "NicknameUpdated":
            return `${who} is now called ${event.text ?? ""}`;
        case "PushUrl":
            return `${who} shared a link: ${event.text ?? ""}`;
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
            const line = describe(event);
            if (line === null) {
                return false;
            }
            if (event.type === "ParticipantLeft" && !mine) {
                this.showTyping("");
            }
            item.className = "system";
            item.textContent = line;
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
