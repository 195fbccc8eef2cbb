/* tslint:disable */
/* eslint-disable */
// Types of the `tidings` package (every entry: `tidings`, `tidings/streams`, `tidings/aggregates`).
// The JS API is sdk-wasm/js/client.js; scripts/build-sdk appends `init`/`initSync` for the web build.

/** connecting | connected | reconnecting | closed */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

export interface TidingsOptions {
    /** WebSocket endpoint, e.g. "ws://127.0.0.1:8000/ws". */
    url?: string;
    /** Several endpoints, tried in turn after failed attempts (failover). */
    urls?: string[];
    /** A fixed JWT. */
    token?: string;
    /** Called before every connection attempt and before the token expires. */
    getToken?: () => string | Promise<string>;
    /** Reconnect backoff: full jitter between 0 and min*2^n, capped at max. Defaults 500 / 20000. */
    reconnect?: { minDelayMs?: number; maxDelayMs?: number };
    /** Save per-topic offsets in sessionStorage so a reload resumes without loss. */
    persistOffsets?: boolean;
    /** Requests without a reply this long after being sent fail with code "TIMEOUT". Default 30000. */
    requestTimeoutMs?: number;
    /** A connection attempt taking longer than this is abandoned. Default 10000. */
    connectTimeoutMs?: number;
    /** Most unacknowledged publishes kept (offline queue). Default 1000. */
    outboxCapacity?: number;
}

export interface TidingsMessage {
    topic: string;
    data: any;
    from: string;
    timestamp: string;
    /** Durable topics only. */
    offset?: number;
    epoch?: string;
}

export interface SubscribeOptions {
    /** "latest" (default), an offset, or a saved position: replay what came after it. */
    since?: "latest" | number | { offset: number; epoch?: string };
}

export interface HistoryOptions { since?: number; limit?: number }

export interface HistoryPage {
    topic: string;
    epoch: string;
    messages: TidingsMessage[];
    latest: number;
    /** true when the page was cut short (by `limit` or the server's byte bound) and later
     *  messages are stored: ask again with `since` = the last message's offset. */
    more: boolean;
}

export interface PublishAck {
    topic: string;
    /** null on ephemeral topics. */
    offset: number | null;
    epoch: string | null;
}

export interface RecoveryInfo {
    topic: string;
    /** false: some messages could not be replayed; reload state from history. */
    recovered: boolean;
}

/** A member of a presence topic: one connection subscribed to it (a user with two tabs is two). */
export interface PresenceMember {
    client_id: string;
    /** The token's identity (`sub` or `user_id`). */
    user: string;
    /** The token's `info` claim, as it was (any JSON); null without one. */
    info: any;
}

/** `onJoin` / `onLeave`: a member arrived on or left the subscription's topic. */
export interface MemberEvent extends PresenceMember { topic: string }

export interface PresencePage {
    topic: string;
    members: PresenceMember[];
    /** true when the topic has more members than one reply carries (the server's
     *  `--presence-max-members`): count them with `presenceStats`. */
    more: boolean;
}

export interface PresenceStats {
    topic: string;
    /** Connections subscribed. */
    clients: number;
    /** Distinct users among them. */
    users: number;
}

export interface StreamEvent { version: number; type: string; data: any; timestamp?: string }

/** The aggregates the SDK folds with the server's own Rust code: `client.stream(id, "order")`. */
export type BuiltinAggregate = "order";

/** A line of an order. Prices are currency units (19.99), whole cents only. */
export interface OrderItem { id: string; name: string; price: number; quantity: number }

/** The state of an `"order"` stream: the Rust `Order`'s serde form. */
export interface OrderState {
    customer_id: string | null;
    items: OrderItem[];
    total: number;
    status: "pending" | "created" | "confirmed" | "shipped" | "cancelled";
}

/** A command of the `"order"` aggregate (the Rust `OrderCommand`), for `stream.execute`. A
 *  refusal rejects with `INVALID_STATE`, `UNKNOWN_ITEM`, `DUPLICATE_ITEM`, `INVALID_ITEM` or
 *  `EMPTY_ORDER`. */
export type OrderCommand =
| { type: "create"; customer_id: string; items?: OrderItem[] }
| ({ type: "add_item" } & OrderItem)
| { type: "remove_item"; item_id: string }
| { type: "confirm" }
| { type: "ship"; tracking_number: string }
| { type: "cancel"; reason: string };

/** Every error the SDK raises: an Error with a stable code. */
export interface TidingsError extends Error {
    code: "TIMEOUT" | "DISCONNECTED" | "CLOSED" | "OUTBOX_FULL" | "INVALID_ARGUMENT" | "UNAUTHORIZED"
    | "TOKEN_PROVIDER" | "VERSION_CONFLICT" | "RATE_LIMITED" | "FORBIDDEN" | "INVALID_TOPIC"
    | "MESSAGE_TOO_LARGE" | "TOO_MANY_SUBSCRIPTIONS" | "UNAVAILABLE" | "PRESENCE_DISABLED"
    | "INVALID_STATE" | "UNKNOWN_ITEM" | "DUPLICATE_ITEM" | "INVALID_ITEM" | "EMPTY_ORDER"
    | "INVALID_SNAPSHOT" | string;
    /** With VERSION_CONFLICT: the stream's actual version. */
    currentVersion?: number;
}



/**
 * A live, folded event stream: `state`, `version`, `onChange`, `append`.
 */
export class EventStream {
    private constructor();
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Append `events` at the known version. Rejects with `code: "VERSION_CONFLICT"` (and
     * `currentVersion`) if someone else appended first.
     */
    append(events: Array<{ type: string; data?: unknown }>): Promise<{ stream: string; version: number }>;
    /**
     * Stop following the stream.
     */
    close(): void;
    /**
     * A built-in aggregate's decision on `command` against the current state, without
     * appending: the events it would append.
     *
     * # Errors
     * Throws the aggregate's refusal (`code`, e.g. `"INVALID_STATE"`), `INVALID_ARGUMENT` for
     * a command that does not decode or a stream folded by a reducer.
     */
    decide(command: OrderCommand): Array<{ type: string; data: any }>;
    /**
     * Decide `command` with the built-in aggregate, then append its events at the folded
     * version. A refused command rejects with the aggregate's code and sends nothing; a
     * stale version rejects with `VERSION_CONFLICT` (and `currentVersion`), not retried: the
     * stream folds the newer events as they arrive and the application decides again.
     */
    execute(command: OrderCommand): Promise<{ stream: string; version: number }>;
    /**
     * Call `handler(state, version)` after every change.
     */
    onChange(handler: (state: any, version: number) => void): void;
    /**
     * Call `handler(error)` if loading or following fails.
     */
    onError(handler: (error: TidingsError) => void): void;
    /**
     * Call `handler(event)` for every event folded (`{version, type, data, timestamp}`),
     * once each, in version order: replayed, live, and our own appends.
     */
    onEvent(handler: (event: StreamEvent) => void): void;
    /**
     * The state folded so far.
     */
    readonly state: any;
    /**
     * The version of the last applied event.
     */
    readonly version: number;
}

/**
 * One `subscribe` call: stop it with `unsubscribe()`.
 */
export class Subscription {
    private constructor();
    free(): void;
    [Symbol.dispose](): void;
    /**
     * The topic's members as the SDK knows them (`{client_id, user, info}`, this client's own
     * connection included), kept current by joins and leaves; `null` before an `onJoin` /
     * `onLeave` handler is attached and its first presence read is answered.
     */
    members(): PresenceMember[] | null;
    /**
     * Call `handler(error)` if the server refuses the subscription, or (with `onJoin` /
     * `onLeave`) the presence read of its topic (`PRESENCE_DISABLED`, `FORBIDDEN`: the
     * subscription itself lives on).
     */
    onError(handler: (error: TidingsError) => void): void;
    /**
     * Call `handler({topic, client_id, user, info})` when another connection subscribes to
     * this presence topic, including ones that arrived while this client was reconnecting.
     */
    onJoin(handler: (event: MemberEvent) => void): void;
    /**
     * Call `handler({topic, client_id, user, info})` when another connection leaves this
     * presence topic (unsubscribed or disconnected), including while this client was away.
     */
    onLeave(handler: (event: MemberEvent) => void): void;
    /**
     * Call `handler({topic, recovered})` after each recovery (reconnect or gap repair).
     * `recovered: false` means some messages could not be replayed.
     */
    onRecovery(handler: (info: RecoveryInfo) => void): void;
    /**
     * Stop receiving messages (the topic is unsubscribed when no one else listens).
     */
    unsubscribe(): void;
    /**
     * The subscribed topic.
     */
    readonly topic: string;
}

/**
 * A Tidings connection: subscribe, publish, history and event streams, with reconnects,
 * replay and an offline queue handled for you.
 */
export class TidingsClient {
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Close the connection for good: pending requests fail with code "CLOSED", and no
     * timer, listener or socket is left behind.
     */
    close(): void;
    /**
     * Stored messages of a durable topic after offset `since` (at most `limit`).
     */
    history(topic: string, options?: HistoryOptions | null): Promise<HistoryPage>;
    /**
     * Connect with `options` (`url` or `urls`, `token` or `getToken`, `reconnect`,
     * `persistOffsets`). Connecting starts at once; watch `onStateChange`.
     */
    constructor(options: TidingsOptions);
    /**
     * Call `handler(error)` for errors not tied to a request (rate limited, token refused,
     * `getToken` failed).
     */
    onError(handler: (error: TidingsError) => void): void;
    /**
     * Call `handler(state)` on every state change.
     */
    onStateChange(handler: (state: ConnectionState) => void): void;
    /**
     * How many are on presence topic `topic`: resolves with `{topic, clients, users}`.
     */
    presenceStats(topic: string): Promise<PresenceStats>;
    /**
     * Who is on presence topic `topic`: resolves with `{topic, members, more}` (`members`:
     * `{client_id, user, info}`; `more`: the topic has more members than one reply carries).
     * Rejects with code "PRESENCE_DISABLED" when the server keeps no presence for the topic.
     */
    presence(topic: string): Promise<PresencePage>;
    /**
     * Publish `data` (any JSON value) to `topic`. Resolves with `{topic, offset, epoch}` once
     * the server acknowledged it; while offline the publish is queued and sent after
     * reconnecting (retries carry the same id, so it is published once).
     */
    publish(topic: string, data: any): Promise<PublishAck>;
    /**
     * Load event stream `id` (snapshot + events), then follow it live. `folder` is either a
     * reducer `(state, event) => state` folding from `initial`, or the name of a built-in
     * aggregate (`"order"`), which folds with the server's Rust code and adds `execute`.
     *
     * # Errors
     * Throws `{code: "INVALID_ARGUMENT"}` for an unknown aggregate name,
     * `{code: "INVALID_REQUEST"}` for an invalid stream id and `{code: "CLOSED"}` after
     * `close()`.
     */
    stream(id: string, folder: ((state: any, event: StreamEvent) => any) | BuiltinAggregate, initial?: any | null): EventStream;
    /**
     * Call `handler(message)` for every message on `topic`. `options.since` resumes after a
     * saved position (replaying what was missed).
     */
    subscribe(topic: string, handler: (message: TidingsMessage) => void, options?: SubscribeOptions | null): Subscription;
    /**
     * The connection state: connecting | connected | reconnecting | closed.
     */
    readonly state: ConnectionState;
}

