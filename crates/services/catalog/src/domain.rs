//! Catalog rules: what a valid product or category is. Input DTOs parse into these types, so
//! the service and the store only ever see values that passed every rule.

use chrono::{DateTime, Utc};
use logicore_contracts::{CategoryId, ProductId};
use logicore_platform::http::FieldError;
use serde::{Deserialize, Serialize};

/// Longest name accepted.
const MAX_NAME_CHARS: usize = 200;
/// Longest description accepted.
const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Longest slug accepted.
const MAX_SLUG_CHARS: usize = 100;
/// Longest SKU accepted.
const MAX_SKU_CHARS: usize = 64;

/// A stored category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// Id.
    pub id: CategoryId,
    /// The writable fields.
    pub fields: CategoryFields,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a category, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryFields {
    /// Display name.
    pub name: String,
    /// URL-safe unique name (`[a-z0-9]+(-[a-z0-9]+)*`).
    pub slug: String,
    /// Free text.
    pub description: Option<String>,
}

/// A stored product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Id.
    pub id: ProductId,
    /// The writable fields.
    pub fields: ProductFields,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a product, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductFields {
    /// Stock-keeping unit, unique.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Price in minor units (≥ 0).
    pub price_cents: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Units in stock (≥ 0).
    pub stock: i64,
    /// Category, if any.
    pub category_id: Option<CategoryId>,
}

/// Collects field errors so a client learns about every invalid field at once.
#[derive(Debug, Default)]
pub struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    /// Records an error on `field` (a JSON Pointer).
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// Returns the value of a required field, recording "is required" when absent.
    pub fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.fail(field, "is required");
        }
        value
    }

    /// Returns `value` when no error was recorded, else the errors.
    pub fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, Vec<FieldError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        value().ok_or_else(|| vec![FieldError::new("", "is invalid")])
    }
}

/// Checks a display name: trimmed, non-empty, at most 200 characters.
pub fn check_name(checker: &mut Checker, field: &str, name: Option<String>) -> Option<String> {
    let name = checker.required(field, name)?;
    let trimmed = name.trim();
    if trimmed.is_empty() {
        checker.fail(field, "must not be empty");
        return None;
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        checker.fail(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
        return None;
    }
    Some(trimmed.to_owned())
}

/// Checks an optional description (at most 5000 characters; blank means none).
pub fn check_description(checker: &mut Checker, description: Option<String>) -> Option<String> {
    let description = description.filter(|text| !text.trim().is_empty())?;
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        checker.fail(
            "/description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }
    Some(description)
}

/// Checks a slug, or derives one from the name when none is given.
pub fn check_slug(
    checker: &mut Checker,
    slug: Option<String>,
    name: Option<&str>,
) -> Option<String> {
    match slug {
        Some(slug) if is_valid_slug(&slug) => Some(slug),
        Some(_) => {
            checker.fail(
                "/slug",
                format!(
                    "must be 1 to {MAX_SLUG_CHARS} lower-case letters, digits and single dashes"
                ),
            );
            None
        }
        None => {
            let derived = slugify(name?);
            if derived.is_empty() {
                checker.fail("/slug", "cannot be derived from the name; give one");
                return None;
            }
            Some(derived)
        }
    }
}

fn is_valid_slug(slug: &str) -> bool {
    (1..=MAX_SLUG_CHARS).contains(&slug.len())
        && slug.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Derives a slug: ASCII letters and digits lower-cased, everything else collapsed to `-`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for character in name.chars() {
        if character.is_ascii_alphanumeric() {
            slug.push(character.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let trimmed = slug.trim_end_matches('-');
    let mut end = trimmed.len().min(MAX_SLUG_CHARS);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    trimmed[..end].trim_end_matches('-').to_owned()
}

/// Checks a SKU: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn check_sku(checker: &mut Checker, sku: Option<String>) -> Option<String> {
    let sku = checker.required("/sku", sku)?;
    let valid = (1..=MAX_SKU_CHARS).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        checker.fail(
            "/sku",
            format!("must be 1 to {MAX_SKU_CHARS} letters, digits, '.', '_' or '-'"),
        );
        return None;
    }
    Some(sku)
}

/// Checks a non-negative integer such as a price or a stock level.
pub fn check_non_negative(checker: &mut Checker, field: &str, value: Option<i64>) -> Option<i64> {
    let value = checker.required(field, value)?;
    if value < 0 {
        checker.fail(field, "must be greater than or equal to 0");
        return None;
    }
    Some(value)
}

/// Checks an ISO 4217 currency code (upper case, active code).
pub fn check_currency(checker: &mut Checker, currency: Option<String>) -> Option<String> {
    let currency = checker.required("/currency", currency)?;
    if !ISO_4217.contains(&currency.as_str()) {
        checker.fail(
            "/currency",
            "must be an ISO 4217 currency code such as \"EUR\" or \"USD\"",
        );
        return None;
    }
    Some(currency)
}

/// Active ISO 4217 alphabetic codes.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_from_names() {
        assert_eq!(slugify("Heavy Freight & Pallets"), "heavy-freight-pallets");
        assert_eq!(slugify("  --Café 24/7--  "), "caf-24-7");
        assert_eq!(slugify("日本"), "");
        assert_eq!(slugify(&"a".repeat(300)).len(), 100);
    }

    #[test]
    fn slugs_given_must_be_well_formed() {
        assert!(is_valid_slug("pallets-2"));
        assert!(!is_valid_slug("Pallets"));
        assert!(!is_valid_slug("a--b"));
        assert!(!is_valid_slug("-a"));
        assert!(!is_valid_slug(""));
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let mut checker = Checker::default();
        check_name(&mut checker, "/name", Some("   ".into()));
        check_non_negative(&mut checker, "/price_cents", Some(-1));
        check_currency(&mut checker, Some("usd".into()));
        check_sku(&mut checker, None);
        let errors = checker.finish(|| Some(())).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(fields, ["/name", "/price_cents", "/currency", "/sku"]);
    }
}
