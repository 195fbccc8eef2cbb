//! The template's Order aggregate, the worked example of an event-sourced stream.
//!
//! The events and their JSON are exactly the template's (`order_created`, `item_added`,
//! `item_removed`, `order_confirmed`, `order_shipped`, `order_cancelled`, with the same
//! `data` fields), so streams written by the template's Order load here and vice versa.
//!
//! One deliberate difference: the template's commands raised any event at any time (an
//! order could be shipped before it was confirmed, or created twice). Here each command
//! checks the current state and returns [`OrderError`] instead of events when the change is
//! not allowed. Applying events does not check anything: a stored event is a fact.
//!
//! Amounts are whole cents ([`Money`]) rather than the template's floats, although on the
//! wire they are still plain JSON numbers like `10.0`. With floats, totals such as
//! `3 × 19.99` are not exact and do not survive a JSON round trip bit for bit (serde_json's
//! default number parser is off by an ulp for about one in eight such sums, measured), so a state restored from a
//! snapshot could differ from the same state folded from events. Integer cents make totals
//! exact and snapshots faithful.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::aggregate::{Aggregate, CommandError, Decide};

/// An amount of money as whole cents (hundredths of the currency unit).
///
/// Exists so totals are exact integers. On the wire it is a JSON number in currency units
/// (`10.0` for 1000 cents), as the template wrote prices; decoding accepts any number that
/// is a whole number of cents (`10`, `10.00`, `0.07`) and rejects sub-cent amounts
/// (`0.005`) rather than silently rounding a fact. Amounts are kept within ±[`Money::MAX`]
/// so that every amount survives the trip through a JSON (double precision) number exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// One cent short of a trillion units. Below it, an amount written as a double in units is
/// within a small fraction of a cent of the decimal it stands for, even after serde_json's
/// default (not correctly rounded) parser, so decoding recovers the exact cents and can
/// still tell a sub-cent amount apart. Near 2^53 cents neither holds.
const MAX_CENTS: i64 = 99_999_999_999_999;

impl Money {
    /// No money: the total of an empty order.
    pub const ZERO: Money = Money(0);

    /// The largest amount, 999 999 999 999.99 units; commands refuse sums beyond it.
    pub const MAX: Money = Money(MAX_CENTS);

    /// An amount of `cents` hundredths, clamped to ±[`Money::MAX`].
    pub const fn from_cents(cents: i64) -> Money {
        if cents > MAX_CENTS {
            Money(MAX_CENTS)
        } else if cents < -MAX_CENTS {
            Money(-MAX_CENTS)
        } else {
            Money(cents)
        }
    }

    /// An amount in currency units as a float (`10.0`, `0.07`), as the template and
    /// JavaScript write prices. `None` if it is not finite, not a whole number of cents, or
    /// beyond ±[`Money::MAX`].
    pub fn from_units(units: f64) -> Option<Money> {
        let scaled = units * 100.0;
        let cents = scaled.round();
        if !cents.is_finite() || cents.abs() > MAX_CENTS as f64 {
            return None;
        }
        // `units` is the nearest double to a decimal like 0.07, and `* 100.0` rounds again,
        // so a whole number of cents comes out within a few ulps of an integer; anything
        // further off had a fraction of a cent.
        let tolerance = (scaled.abs() * f64::EPSILON * 4.0).max(1e-9);
        if (scaled - cents).abs() > tolerance {
            return None;
        }
        Some(Money(cents as i64))
    }

    /// The amount in cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// The amount in currency units, as written on the wire.
    pub fn units(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// `self + other`, or `None` beyond ±[`Money::MAX`].
    fn checked_add(self, other: Money) -> Option<Money> {
        self.0
            .checked_add(other.0)
            .filter(|c| c.abs() <= MAX_CENTS)
            .map(Money)
    }

    /// `self × n`, or `None` beyond ±[`Money::MAX`].
    fn checked_mul(self, n: u32) -> Option<Money> {
        self.0
            .checked_mul(i64::from(n))
            .filter(|c| c.abs() <= MAX_CENTS)
            .map(Money)
    }

    /// `self + other`, clamped: for applying events, which cannot fail.
    fn saturating_add(self, other: Money) -> Money {
        Money::from_cents(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Money {
    /// Two decimals, e.g. `45.00`, `-0.07`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.units())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let units = f64::deserialize(deserializer)?;
        Money::from_units(units).ok_or_else(|| {
            D::Error::custom(format_args!(
                "amount {units} is not a whole number of cents within ±{}",
                Money::MAX
            ))
        })
    }
}

/// One line of an order. The template's item dict: `{"id", "name", "price", "quantity"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Identifies the line within the order, so it can be removed again.
    pub id: String,
    /// What a person sees.
    pub name: String,
    /// The price of one unit.
    pub price: Money,
    /// How many units.
    pub quantity: u32,
}

impl Item {
    /// An item, for building commands without spelling out the struct.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        price: Money,
        quantity: u32,
    ) -> Item {
        Item {
            id: id.into(),
            name: name.into(),
            price,
            quantity,
        }
    }

    /// `price × quantity`: what this line adds to the order's total (clamped to
    /// [`Money::MAX`]; commands refuse items that would exceed it).
    pub fn subtotal(&self) -> Money {
        Money::from_cents(self.price.0.saturating_mul(i64::from(self.quantity)))
    }

    /// Why a command must refuse this item, if it must.
    fn check(&self) -> Result<Money, OrderError> {
        let reason = if self.id.is_empty() {
            "id must not be empty"
        } else if self.quantity == 0 {
            "quantity must be at least 1"
        } else if self.price.0 < 0 {
            "price must not be negative"
        } else {
            return self
                .price
                .checked_mul(self.quantity)
                .ok_or_else(|| too_large(self));
        };
        Err(OrderError::InvalidItem {
            item_id: self.id.clone(),
            reason,
        })
    }
}

/// The refusal for an item whose amount would pass [`Money::MAX`].
fn too_large(item: &Item) -> OrderError {
    OrderError::InvalidItem {
        item_id: item.id.clone(),
        reason: "amount too large",
    }
}

/// Where an order is in its life. Serialized lowercase, as the template's `status` strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// No `order_created` yet: the state of a stream that does not exist.
    #[default]
    Pending,
    /// Created; items may still be added and removed.
    Created,
    /// Confirmed by the customer; items are fixed, it can be shipped or cancelled.
    Confirmed,
    /// Handed to the carrier. Final.
    Shipped,
    /// Cancelled. Final.
    Cancelled,
}

impl OrderStatus {
    /// The wire spelling, for messages.
    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Created => "created",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to an order: the events of an order stream.
///
/// On the wire `{"type": "order_created", "data": {...}}`, with each `data` exactly what the
/// template's `raise_event` calls wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum OrderEvent {
    /// `order_created`: the order exists, with its first items.
    OrderCreated {
        /// Who ordered.
        customer_id: String,
        /// The initial items.
        items: Vec<Item>,
        /// The sum of the items' subtotals when the order was created.
        total: Money,
    },
    /// `item_added`: `data` is the item itself.
    ItemAdded(Item),
    /// `item_removed`: every line with this id is gone.
    ItemRemoved {
        /// The removed item's `id`.
        item_id: String,
    },
    /// `order_confirmed`, with `data` `{}`.
    OrderConfirmed {},
    /// `order_shipped`.
    OrderShipped {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// `order_cancelled`.
    OrderCancelled {
        /// Why, as the person cancelling said.
        reason: String,
    },
}

/// A request to change an order: the commands of [`Order`] as data, for [`Order::handle`].
///
/// Tagged by `type` like the events, with the command's arguments beside it:
/// `{"type": "create", "customer_id": "c-1", "items": [...]}`,
/// `{"type": "add_item", "id": "i-1", "name": "Mug", "price": 12.5, "quantity": 2}` (the item's
/// own fields), `{"type": "remove_item", "item_id": "i-1"}`, `{"type": "confirm"}`,
/// `{"type": "ship", "tracking_number": "T-1"}`, `{"type": "cancel", "reason": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderCommand {
    /// [`Order::create`].
    Create {
        /// Who orders.
        customer_id: String,
        /// The initial items (none if absent).
        #[serde(default)]
        items: Vec<Item>,
    },
    /// [`Order::add_item`], the item's fields beside `type`.
    AddItem(Item),
    /// [`Order::remove_item`].
    RemoveItem {
        /// The item to remove.
        item_id: String,
    },
    /// [`Order::confirm`].
    Confirm {},
    /// [`Order::ship`].
    Ship {
        /// The carrier's tracking number.
        tracking_number: String,
    },
    /// [`Order::cancel`].
    Cancel {
        /// Why.
        reason: String,
    },
}

/// Why a command refused to change an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// The command is not allowed in the order's current status (e.g. ship before confirm,
    /// create twice, add to a shipped order).
    #[error("cannot {command} an order that is {status}")]
    InvalidTransition {
        /// The refused command: `create`, `add_item`, `remove_item`, `confirm`, `ship`,
        /// `cancel`.
        command: &'static str,
        /// The order's status at the time.
        status: OrderStatus,
    },
    /// `remove_item` named an id that is not in the order.
    #[error("no item {0:?} in the order")]
    UnknownItem(String),
    /// An item's id is already in the order (or twice in `create`); ids must be unique so
    /// `remove_item` removes what was meant.
    #[error("item {0:?} is already in the order")]
    DuplicateItem(String),
    /// An item is malformed: empty id, zero quantity, negative price, or an amount beyond
    /// [`Money::MAX`].
    #[error("invalid item {item_id:?}: {reason}")]
    InvalidItem {
        /// The item's id.
        item_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `confirm` on an order with no items.
    #[error("cannot confirm an order with no items")]
    EmptyOrder,
}

impl OrderError {
    /// The stable code of this refusal: `INVALID_STATE`, `UNKNOWN_ITEM`, `DUPLICATE_ITEM`,
    /// `INVALID_ITEM` or `EMPTY_ORDER`.
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::InvalidTransition { .. } => "INVALID_STATE",
            OrderError::UnknownItem(_) => "UNKNOWN_ITEM",
            OrderError::DuplicateItem(_) => "DUPLICATE_ITEM",
            OrderError::InvalidItem { .. } => "INVALID_ITEM",
            OrderError::EmptyOrder => "EMPTY_ORDER",
        }
    }
}

impl CommandError for OrderError {
    fn code(&self) -> &'static str {
        OrderError::code(self)
    }
}

/// The state of one order, folded from its stream.
///
/// Serializes as the template's `get_state()`: `{"customer_id", "items", "total", "status"}`.
/// Commands are methods that check this state and return the events to append; they do not
/// change it. Apply the events (after a successful append) to move the state on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Who ordered; `None` until `order_created`.
    pub customer_id: Option<String>,
    /// The order's lines, in the order they were added.
    pub items: Vec<Item>,
    /// What the order costs: the sum of the items' subtotals.
    pub total: Money,
    /// Where the order is in its life.
    pub status: OrderStatus,
}

impl Order {
    /// Create the order (template `create`). Only once: the stream must be new.
    pub fn create(
        &self,
        customer_id: impl Into<String>,
        items: Vec<Item>,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("create", &[OrderStatus::Pending])?;
        let mut total = Money::ZERO;
        for (i, item) in items.iter().enumerate() {
            if items[..i].iter().any(|other| other.id == item.id) {
                return Err(OrderError::DuplicateItem(item.id.clone()));
            }
            total = total
                .checked_add(item.check()?)
                .ok_or_else(|| too_large(item))?;
        }
        Ok(vec![OrderEvent::OrderCreated {
            customer_id: customer_id.into(),
            items,
            total,
        }])
    }

    /// Add a line (template `add_item`), while the order is created and not yet confirmed.
    pub fn add_item(&self, item: Item) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("add_item", &[OrderStatus::Created])?;
        if self.items.iter().any(|other| other.id == item.id) {
            return Err(OrderError::DuplicateItem(item.id));
        }
        self.total
            .checked_add(item.check()?)
            .ok_or_else(|| too_large(&item))?;
        Ok(vec![OrderEvent::ItemAdded(item)])
    }

    /// Remove a line by id (template `remove_item`), while the order is not yet confirmed.
    pub fn remove_item(&self, item_id: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("remove_item", &[OrderStatus::Created])?;
        if !self.items.iter().any(|item| item.id == item_id) {
            return Err(OrderError::UnknownItem(item_id.to_owned()));
        }
        Ok(vec![OrderEvent::ItemRemoved {
            item_id: item_id.to_owned(),
        }])
    }

    /// Confirm the order (template `confirm`): fixes its items. It must have at least one.
    pub fn confirm(&self) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("confirm", &[OrderStatus::Created])?;
        if self.items.is_empty() {
            return Err(OrderError::EmptyOrder);
        }
        Ok(vec![OrderEvent::OrderConfirmed {}])
    }

    /// Ship the order (template `ship`); only a confirmed order ships.
    pub fn ship(&self, tracking_number: impl Into<String>) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("ship", &[OrderStatus::Confirmed])?;
        Ok(vec![OrderEvent::OrderShipped {
            tracking_number: tracking_number.into(),
        }])
    }

    /// Cancel the order (template `cancel`), any time before it ships.
    pub fn cancel(&self, reason: impl Into<String>) -> Result<Vec<OrderEvent>, OrderError> {
        self.require("cancel", &[OrderStatus::Created, OrderStatus::Confirmed])?;
        Ok(vec![OrderEvent::OrderCancelled {
            reason: reason.into(),
        }])
    }

    /// Decide a command given as data: the same checks and events as the method it names.
    pub fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Create { customer_id, items } => {
                self.create(customer_id.clone(), items.clone())
            }
            OrderCommand::AddItem(item) => self.add_item(item.clone()),
            OrderCommand::RemoveItem { item_id } => self.remove_item(item_id),
            OrderCommand::Confirm {} => self.confirm(),
            OrderCommand::Ship { tracking_number } => self.ship(tracking_number.clone()),
            OrderCommand::Cancel { reason } => self.cancel(reason.clone()),
        }
    }

    /// Refuse `command` unless the order is in one of `allowed`.
    fn require(&self, command: &'static str, allowed: &[OrderStatus]) -> Result<(), OrderError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(OrderError::InvalidTransition {
                command,
                status: self.status,
            })
        }
    }
}

impl Aggregate for Order {
    type Event = OrderEvent;

    const EVENT_TYPES: &'static [&'static str] = &[
        "order_created",
        "item_added",
        "item_removed",
        "order_confirmed",
        "order_shipped",
        "order_cancelled",
    ];

    /// The template's `_handle_*` methods, one arm each.
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated {
                customer_id,
                items,
                total,
            } => {
                self.customer_id = Some(customer_id.clone());
                self.items = items.clone();
                self.total = *total;
                self.status = OrderStatus::Created;
            }
            OrderEvent::ItemAdded(item) => {
                self.items.push(item.clone());
                self.total = self.total.saturating_add(item.subtotal());
            }
            OrderEvent::ItemRemoved { item_id } => {
                self.items.retain(|item| item.id != *item_id);
                // Recomputed from what is left, as the template does.
                self.total = self
                    .items
                    .iter()
                    .fold(Money::ZERO, |sum, item| sum.saturating_add(item.subtotal()));
            }
            OrderEvent::OrderConfirmed {} => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

impl Decide for Order {
    type Command = OrderCommand;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        Order::handle(self, command)
    }
}
