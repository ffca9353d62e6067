//! Payment methods: a card per account, the number stored encrypted and only shown masked.

use chrono::Datelike;
use logicore_platform::crypto::masking::mask_card_number;
use logicore_platform::http::FieldError;

/// A validated card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// Digits only.
    pub number: String,
    /// `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    pub brand: &'static str,
    /// 1-12.
    pub exp_month: u32,
    /// Four digits.
    pub exp_year: i32,
}

impl Card {
    /// The number as shown: twelve `*` and the last four digits.
    pub fn masked(&self) -> String {
        mask_card_number(&self.number)
    }
}

/// Checks a card: 13-19 digits (spaces and dashes ignored) passing the Luhn check, a month
/// 1-12, a year and month not in the past. Every problem is reported.
pub fn check_card(number: &str, exp_month: i64, exp_year: i64) -> Result<Card, Vec<FieldError>> {
    let mut errors = Vec::new();
    let digits: String = number.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !(13..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        errors.push(FieldError::new("/card_number", "must be 13-19 digits"));
    } else if !luhn(&digits) {
        errors.push(FieldError::new(
            "/card_number",
            "is not a valid card number (Luhn check)",
        ));
    }
    if !(1..=12).contains(&exp_month) {
        errors.push(FieldError::new("/exp_month", "must be 1-12"));
    }
    let today = chrono::Utc::now();
    let (year, month) = (i64::from(today.year()), i64::from(today.month()));
    if !(1000..=9999).contains(&exp_year) {
        errors.push(FieldError::new("/exp_year", "must be a four-digit year"));
    } else if exp_year < year
        || (exp_year == year && (1..=12).contains(&exp_month) && exp_month < month)
    {
        errors.push(FieldError::new("/exp_year", "the card has expired"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Card {
        brand: brand(&digits),
        number: digits,
        exp_month: u32::try_from(exp_month).unwrap_or(1),
        exp_year: i32::try_from(exp_year).unwrap_or(0),
    })
}

/// The Luhn (mod 10) check.
pub fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(index, byte)| {
            let digit = u32::from(byte - b'0');
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The card network by number prefix.
pub fn brand(digits: &str) -> &'static str {
    let prefix = |length: usize| {
        digits
            .get(..length)
            .and_then(|text| text.parse::<u32>().ok())
    };
    match (prefix(1), prefix(2), prefix(3), prefix(4)) {
        (Some(4), ..) => "visa",
        (_, Some(51..=55), ..) | (.., Some(2221..=2720)) => "mastercard",
        (_, Some(34 | 37), ..) => "amex",
        (.., Some(6011)) | (_, Some(65), ..) | (_, _, Some(644..=649), _) => "discover",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_brands() {
        for (number, expected) in [
            ("4242424242424242", "visa"),
            ("5555555555554444", "mastercard"),
            ("2223003122003222", "mastercard"),
            ("378282246310005", "amex"),
            ("6011111111111117", "discover"),
            ("3530111333300000", "unknown"),
        ] {
            assert!(luhn(number), "{number}");
            assert_eq!(brand(number), expected, "{number}");
        }
        assert!(!luhn("4242424242424241"));
    }

    #[test]
    fn cards_are_checked_field_by_field() {
        let year = i64::from(chrono::Utc::now().year());
        let card = check_card("4242 4242 4242 4242", 12, year + 1).unwrap();
        assert_eq!(card.masked(), "************4242");
        let errors = check_card("4242424242424241", 13, year - 1).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(fields, ["/card_number", "/exp_month", "/exp_year"]);
        assert!(check_card("42", 1, year + 1).is_err());
    }
}
