//! Masking of sensitive values: card numbers and SSNs are shown by their last four digits
//! only (SPEC §3), and JSON documents can be masked field by field at any depth.

use serde_json::Value;

/// Twelve `*` and the last four digits: `************4242` (SPEC §3, whatever the length).
pub fn mask_card_number(value: &str) -> String {
    format!("************{}", last_four_digits(value))
}

/// `***-**-` and the last four digits: `***-**-6789`.
pub fn mask_ssn(value: &str) -> String {
    format!("***-**-{}", last_four_digits(value))
}

fn last_four_digits(value: &str) -> String {
    let digits: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(4)..].iter().collect()
}

/// Field names whose values are masked, compared without case, `_` or `-`
/// (`creditCard` = `credit_card` = `CREDIT-CARD`).
#[derive(Debug, Clone)]
pub struct MaskRules {
    fields: Vec<String>,
}

fn normalise(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl MaskRules {
    /// Rules for `fields`.
    pub fn new<S: AsRef<str>>(fields: &[S]) -> Self {
        MaskRules {
            fields: fields
                .iter()
                .map(|field| normalise(field.as_ref()))
                .collect(),
        }
    }

    fn applies_to(&self, name: &str) -> bool {
        let name = normalise(name);
        self.fields.contains(&name)
    }

    /// Masks, at any depth, every string or number under a matching field name (SSN fields in
    /// the SSN format, the rest as card numbers); values already masked are left as they are.
    /// Returns how many values were masked.
    pub fn apply(&self, document: &mut Value) -> usize {
        match document {
            Value::Object(fields) => {
                let mut masked = 0;
                for (name, value) in fields.iter_mut() {
                    if self.applies_to(name) {
                        masked += mask_value(name, value);
                    } else {
                        masked += self.apply(value);
                    }
                }
                masked
            }
            Value::Array(items) => items.iter_mut().map(|item| self.apply(item)).sum(),
            _ => 0,
        }
    }
}

fn mask_value(name: &str, value: &mut Value) -> usize {
    let text = match value {
        Value::String(text) if text.starts_with('*') => return 0,
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        // An object or array under a sensitive name: mask every scalar inside it.
        Value::Object(_) | Value::Array(_) => return mask_everything(name, value),
        Value::Null | Value::Bool(_) => return 0,
    };
    *value = Value::String(if normalise(name) == "ssn" {
        mask_ssn(&text)
    } else {
        mask_card_number(&text)
    });
    1
}

fn mask_everything(name: &str, value: &mut Value) -> usize {
    match value {
        Value::Object(fields) => fields
            .values_mut()
            .map(|inner| mask_everything(name, inner))
            .sum(),
        Value::Array(items) => items
            .iter_mut()
            .map(|inner| mask_everything(name, inner))
            .sum(),
        scalar => mask_value(name, scalar),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cards_and_ssns_show_their_last_four_digits() {
        assert_eq!(mask_card_number("4242 4242 4242 4242"), "************4242");
        assert_eq!(mask_card_number("378282246310005"), "************0005");
        assert_eq!(mask_ssn("123-45-6789"), "***-**-6789");
    }

    #[test]
    fn documents_are_masked_at_any_depth() {
        let rules = MaskRules::new(&["creditCard", "card_number", "ssn"]);
        let mut document = json!({
            "user": {"name": "Ada", "SSN": "123-45-6789"},
            "payments": [
                {"credit_card": "4111111111111111", "amount": 100},
                {"cardNumber": 5555555555554444u64},
                {"card_number": "************4444"}
            ],
            "creditCard": {"number": "4012888888881881", "exp": 12},
            "note": "card_number is a field name, not a value"
        });
        let masked = rules.apply(&mut document);
        assert_eq!(
            document,
            json!({
                "user": {"name": "Ada", "SSN": "***-**-6789"},
                "payments": [
                    {"credit_card": "************1111", "amount": 100},
                    {"cardNumber": "************4444"},
                    {"card_number": "************4444"}
                ],
                "creditCard": {"number": "************1881", "exp": "************12"},
                "note": "card_number is a field name, not a value"
            })
        );
        assert_eq!(masked, 5);
    }
}
