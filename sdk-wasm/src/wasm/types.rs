//! TypeScript declarations for the package's `.d.ts`: option and message shapes, and the
//! typed callback and promise types used in the exported signatures.

#![allow(missing_docs)] // the extern types below are documented by their TypeScript names

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
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
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "TidingsOptions")]
    pub type TidingsOptions;
    #[wasm_bindgen(typescript_type = "SubscribeOptions")]
    pub type SubscribeOptionsArg;
    #[wasm_bindgen(typescript_type = "HistoryOptions")]
    pub type HistoryOptionsArg;
    #[wasm_bindgen(typescript_type = "(message: TidingsMessage) => void")]
    pub type MessageHandler;
    #[wasm_bindgen(typescript_type = "(state: ConnectionState) => void")]
    pub type StateHandler;
    #[wasm_bindgen(typescript_type = "(error: TidingsError) => void")]
    pub type ErrorHandler;
    #[wasm_bindgen(typescript_type = "(info: RecoveryInfo) => void")]
    pub type RecoveryHandler;
    #[wasm_bindgen(typescript_type = "Promise<PublishAck>")]
    pub type PublishPromise;
    #[wasm_bindgen(typescript_type = "Promise<HistoryPage>")]
    pub type HistoryPromise;
    #[wasm_bindgen(typescript_type = "(event: MemberEvent) => void")]
    pub type MemberHandler;
    #[wasm_bindgen(typescript_type = "PresenceMember[] | null")]
    pub type MembersList;
    #[wasm_bindgen(typescript_type = "Promise<PresencePage>")]
    pub type PresencePromise;
    #[wasm_bindgen(typescript_type = "Promise<PresenceStats>")]
    pub type PresenceStatsPromise;
    #[wasm_bindgen(typescript_type = "Promise<{ stream: string; version: number }>")]
    pub type AppendPromise;
    #[wasm_bindgen(typescript_type = "ConnectionState")]
    pub type StateName;
    #[wasm_bindgen(
        typescript_type = "((state: any, event: StreamEvent) => any) | BuiltinAggregate"
    )]
    pub type StreamFolder;
    #[wasm_bindgen(typescript_type = "OrderCommand")]
    pub type AggregateCommand;
    #[wasm_bindgen(typescript_type = "Array<{ type: string; data: any }>")]
    pub type DecidedEvents;
    #[wasm_bindgen(typescript_type = "(event: StreamEvent) => void")]
    pub type EventHandler;
    #[wasm_bindgen(typescript_type = "Array<{ type: string; data?: unknown }>")]
    pub type NewEvents;
    #[wasm_bindgen(typescript_type = "(state: any, version: number) => void")]
    pub type ChangeHandler;
}
