// The template's Order aggregate, in the browser: the same events and JSON as
// shared-protocol/src/order.rs (and the original Python template), so the server's tests,
// the Rust repository and this page agree on every stream.
//
// `reduceOrder` folds one stored event into the state; it never refuses anything (a stored
// event is a fact). The commands check the current state first, as the Rust `Order` does, and
// return the events to append, or throw an `OrderError`. Amounts are handled in whole cents so
// that totals are exact (3 x 19.99 is 59.97, not 59.970000000000006).

export const STATUSES = ["pending", "created", "confirmed", "shipped", "cancelled"];

/** The state of an order stream that does not exist yet (the Rust `Order::default()`). */
export function initialOrder() {
  return { customer_id: null, items: [], total: 0, status: "pending" };
}

/** Units (a JSON number such as 19.99) to whole cents. */
export function toCents(units) {
  return Math.round(Number(units) * 100);
}

/** Whole cents to a display string with two decimals, e.g. "59.97". */
export function formatMoney(units) {
  const c = toCents(units);
  const sign = c < 0 ? "-" : "";
  const abs = Math.abs(c);
  return `${sign}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

function sumCents(items) {
  return items.reduce((sum, i) => sum + toCents(i.price) * Number(i.quantity), 0);
}

/** Fold one event `{type, data}` into `state`, returning a new state object. */
export function reduceOrder(state, event) {
  const s = { ...(state ?? initialOrder()) };
  s.items = [...(s.items ?? [])];
  const d = event?.data ?? {};
  switch (event?.type) {
    case "order_created":
      s.customer_id = d.customer_id ?? null;
      s.items = [...(d.items ?? [])];
      s.total = d.total ?? sumCents(s.items) / 100;
      s.status = "created";
      break;
    case "item_added":
      s.items.push(d);
      s.total = (toCents(s.total) + toCents(d.price) * Number(d.quantity)) / 100;
      break;
    case "item_removed":
      s.items = s.items.filter((i) => i.id !== d.item_id);
      s.total = sumCents(s.items) / 100; // recomputed, as the template does
      break;
    case "order_confirmed":
      s.status = "confirmed";
      break;
    case "order_shipped":
      s.status = "shipped";
      s.tracking_number = d.tracking_number;
      break;
    case "order_cancelled":
      s.status = "cancelled";
      s.cancel_reason = d.reason;
      break;
    default:
      break; // unknown event types are kept in the log but change nothing
  }
  return s;
}

/** A command the order's current state does not allow. */
export class OrderError extends Error {
  constructor(message) {
    super(message);
    this.name = "OrderError";
    this.code = "ORDER_REFUSED";
  }
}

function require(state, command, allowed) {
  if (!allowed.includes(state.status)) {
    throw new OrderError(`cannot ${command} an order that is ${state.status}`);
  }
}

function checkItem(item) {
  if (!item.id) throw new OrderError("item id must not be empty");
  if (!Number.isInteger(item.quantity) || item.quantity < 1) {
    throw new OrderError(`invalid item ${item.id}: quantity must be at least 1`);
  }
  if (!(toCents(item.price) >= 0)) throw new OrderError(`invalid item ${item.id}: bad price`);
}

/** Which commands the state allows: for enabling buttons. */
export function allowed(state) {
  const st = state.status;
  return {
    create: st === "pending",
    add_item: st === "created",
    remove_item: st === "created" && state.items.length > 0,
    confirm: st === "created" && state.items.length > 0,
    ship: st === "confirmed",
    cancel: st === "created" || st === "confirmed",
  };
}

/** The six commands: each returns the events to append, or throws OrderError. */
export const commands = {
  create(state, { customer_id, items = [] }) {
    require(state, "create", ["pending"]);
    const seen = new Set();
    for (const item of items) {
      checkItem(item);
      if (seen.has(item.id)) throw new OrderError(`item ${item.id} is already in the order`);
      seen.add(item.id);
    }
    return [{ type: "order_created", data: { customer_id, items, total: sumCents(items) / 100 } }];
  },
  add_item(state, item) {
    require(state, "add_item", ["created"]);
    checkItem(item);
    if (state.items.some((i) => i.id === item.id)) {
      throw new OrderError(`item ${item.id} is already in the order`);
    }
    return [{ type: "item_added", data: item }];
  },
  remove_item(state, { item_id }) {
    require(state, "remove_item", ["created"]);
    if (!state.items.some((i) => i.id === item_id)) {
      throw new OrderError(`no item ${item_id} in the order`);
    }
    return [{ type: "item_removed", data: { item_id } }];
  },
  confirm(state) {
    require(state, "confirm", ["created"]);
    if (state.items.length === 0) throw new OrderError("cannot confirm an order with no items");
    return [{ type: "order_confirmed", data: {} }];
  },
  ship(state, { tracking_number }) {
    require(state, "ship", ["confirmed"]);
    return [{ type: "order_shipped", data: { tracking_number } }];
  },
  cancel(state, { reason }) {
    require(state, "cancel", ["created", "confirmed"]);
    return [{ type: "order_cancelled", data: { reason } }];
  },
};

/** A small catalogue for the "add item" picker. */
export const CATALOGUE = [
  { sku: "mug", name: "Tidings mug", price: 12.5 },
  { sku: "tee", name: "T-shirt", price: 19.99 },
  { sku: "sticker", name: "Sticker pack", price: 3.25 },
  { sku: "hoodie", name: "Hoodie", price: 45.0 },
  { sku: "cap", name: "Cap", price: 15.0 },
];
