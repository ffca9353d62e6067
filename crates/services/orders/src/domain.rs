//! Orders: the representation of SPEC §3, the status machine, and the checks on what a
//! client sends.

use chrono::{DateTime, Utc};
use logicore_contracts::stock::ReserveLine;
use logicore_contracts::{OrderId, ProductId};
use logicore_platform::http::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lines an order may have.
pub const MAX_LINES: usize = 100;
/// Units one line may ask for.
pub const MAX_QUANTITY: i64 = 10_000;

/// Where an order is in its life. `Pending` is internal: an order being created (its stock
/// not yet reserved) is never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Being created; never shown.
    Pending,
    /// Placed, stock reserved.
    Created,
    /// Accepted by the merchant.
    Confirmed,
    /// Handed to the carrier.
    Shipped,
    /// Arrived.
    Delivered,
    /// Cancelled; its stock went back.
    Cancelled,
}

impl OrderStatus {
    const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Created,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Created => "created",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<OrderStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Whether an order may go from `self` to `next`: created → confirmed → shipped →
    /// delivered, and cancelled from created or confirmed.
    pub fn may_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Created, Confirmed)
                | (Confirmed, Shipped)
                | (Shipped, Delivered)
                | (Created | Confirmed, Cancelled)
        )
    }
}

/// A shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// More of the address, or null.
    pub line2: Option<String>,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// One line of an order, with the product as it was when ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    /// The product.
    #[schema(value_type = Uuid)]
    pub product_id: ProductId,
    /// Its SKU.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Units.
    pub quantity: u32,
    /// Unit price in minor units.
    pub unit_price_cents: i64,
}

/// An order as the API returns it (and as order events carry it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Order {
    /// Id.
    #[schema(value_type = Uuid)]
    pub id: OrderId,
    /// The customer (the `sub` of their token).
    pub user_id: String,
    /// Status.
    pub status: OrderStatus,
    /// Lines.
    pub items: Vec<OrderLine>,
    /// Sum of quantity × unit price, in minor units.
    pub total_cents: i64,
    /// ISO 4217 currency of every price.
    pub currency: String,
    /// Where it goes.
    pub shipping_address: Address,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A checked order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// What to reserve, in request order.
    pub lines: Vec<ReserveLine>,
    /// Where it goes.
    pub shipping_address: Address,
}

/// A line as a client writes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineIn {
    /// Product id.
    #[schema(required = true)]
    pub product_id: Option<Uuid>,
    /// Units, 1–10000.
    #[schema(required = true, minimum = 1, maximum = 10000)]
    pub quantity: Option<i64>,
}

/// An address as a client writes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressIn {
    /// Recipient (1–200 characters).
    #[schema(required = true)]
    pub name: Option<String>,
    /// Street and number (1–200 characters).
    #[schema(required = true)]
    pub line1: Option<String>,
    /// More of the address (up to 200 characters).
    pub line2: Option<String>,
    /// City (1–100 characters).
    #[schema(required = true)]
    pub city: Option<String>,
    /// Postal code (1–20 characters).
    #[schema(required = true)]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code (`DE`, `US`, ...).
    #[schema(required = true, example = "DE")]
    pub country: Option<String>,
}

/// An order request (`POST /api/v1/orders`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderIn {
    /// 1–100 lines, each product at most once.
    #[schema(required = true)]
    pub items: Option<Vec<LineIn>>,
    /// Where it goes.
    #[schema(required = true)]
    pub shipping_address: Option<AddressIn>,
}

impl OrderIn {
    /// Checks every field; all errors are reported together.
    pub fn parse(self) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut lines = Vec::new();
        match self.items {
            None => errors.push(FieldError::new("/items", "is required")),
            Some(items) if items.is_empty() => {
                errors.push(FieldError::new("/items", "must list at least one product"));
            }
            Some(items) if items.len() > MAX_LINES => errors.push(FieldError::new(
                "/items",
                format!("at most {MAX_LINES} lines"),
            )),
            Some(items) => {
                let mut seen = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    let product = item.product_id.map(ProductId);
                    if product.is_none() {
                        errors.push(FieldError::new(
                            format!("/items/{index}/product_id"),
                            "is required",
                        ));
                    } else if seen.contains(&product) {
                        errors.push(FieldError::new(
                            format!("/items/{index}/product_id"),
                            "this product is already on another line",
                        ));
                    }
                    seen.push(product);
                    let quantity = match item.quantity {
                        None => {
                            errors.push(FieldError::new(
                                format!("/items/{index}/quantity"),
                                "is required",
                            ));
                            None
                        }
                        Some(quantity) if !(1..=MAX_QUANTITY).contains(&quantity) => {
                            errors.push(FieldError::new(
                                format!("/items/{index}/quantity"),
                                format!("must be between 1 and {MAX_QUANTITY}"),
                            ));
                            None
                        }
                        Some(quantity) => u32::try_from(quantity).ok(),
                    };
                    if let (Some(product_id), Some(quantity)) = (product, quantity) {
                        lines.push(ReserveLine {
                            product_id,
                            quantity,
                        });
                    }
                }
            }
        }
        let address = match self.shipping_address {
            None => {
                errors.push(FieldError::new("/shipping_address", "is required"));
                None
            }
            Some(address) => address.parse(&mut errors),
        };
        match address {
            Some(shipping_address) if errors.is_empty() => Ok(NewOrder {
                lines,
                shipping_address,
            }),
            _ => Err(errors),
        }
    }
}

fn text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    let pointer = format!("/shipping_address/{field}");
    match value.map(|value| value.trim().to_owned()) {
        None => {
            errors.push(FieldError::new(pointer, "is required"));
            None
        }
        Some(value) if value.is_empty() => {
            errors.push(FieldError::new(pointer, "must not be empty"));
            None
        }
        Some(value) if value.chars().count() > max => {
            errors.push(FieldError::new(
                pointer,
                format!("at most {max} characters"),
            ));
            None
        }
        Some(value) => Some(value),
    }
}

impl AddressIn {
    fn parse(self, errors: &mut Vec<FieldError>) -> Option<Address> {
        let name = text(errors, "name", self.name, 200);
        let line1 = text(errors, "line1", self.line1, 200);
        let line2 = match self.line2.map(|line| line.trim().to_owned()) {
            Some(line) if line.chars().count() > 200 => {
                errors.push(FieldError::new(
                    "/shipping_address/line2",
                    "at most 200 characters",
                ));
                None
            }
            Some(line) if line.is_empty() => None,
            line => line,
        };
        let city = text(errors, "city", self.city, 100);
        let postal_code = text(errors, "postal_code", self.postal_code, 20);
        let country = text(errors, "country", self.country, 2).and_then(|country| {
            if is_country_code(&country) {
                Some(country)
            } else {
                errors.push(FieldError::new(
                    "/shipping_address/country",
                    "must be an ISO 3166-1 alpha-2 code in capitals (DE, US, ...)",
                ));
                None
            }
        });
        Some(Address {
            name: name?,
            line1: line1?,
            line2,
            city: city?,
            postal_code: postal_code?,
            country: country?,
        })
    }
}

/// The officially assigned ISO 3166-1 alpha-2 codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI \
BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE \
DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS \
GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW \
KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW \
MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO \
RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM \
TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Whether `code` is an assigned ISO 3166-1 alpha-2 code.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && COUNTRIES.split(' ').any(|known| known == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_machine_allows_only_the_documented_moves() {
        use OrderStatus::*;
        let allowed: Vec<(OrderStatus, OrderStatus)> = OrderStatus::ALL
            .into_iter()
            .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Created, Confirmed),
                (Created, Cancelled),
                (Confirmed, Shipped),
                (Confirmed, Cancelled),
                (Shipped, Delivered),
            ]
        );
    }

    #[test]
    fn country_codes_are_the_assigned_ones() {
        assert_eq!(COUNTRIES.split(' ').count(), 249);
        assert!(is_country_code("DE") && is_country_code("US") && is_country_code("GB"));
        assert!(!is_country_code("de") && !is_country_code("XX") && !is_country_code("UK"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let body: OrderIn = serde_json::from_value(serde_json::json!({
            "items": [
                {"product_id": "0190a5f0-0000-7000-8000-000000000001", "quantity": 0},
                {"quantity": 2},
                {"product_id": "0190a5f0-0000-7000-8000-000000000001", "quantity": 1},
            ],
            "shipping_address": {"name": " ", "line1": "x", "city": "y", "postal_code": "1", "country": "XX"}
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        let errors = body.parse().err().unwrap_or_default();
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "/items/0/quantity",
                "/items/1/product_id",
                "/items/2/product_id",
                "/shipping_address/name",
                "/shipping_address/country",
            ]
        );
    }
}
