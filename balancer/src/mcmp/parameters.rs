//! A command's body read as `mod_manager` reads it, and the values it takes apart the same
//! way: names and values alternate between `&` and `=`, `%XX` is decoded where it is hex, and
//! characters that would let a value escape its place in a page or a header are refused.

use super::{McmpError, syntax};

/// The message mod_manager gives for a body it cannot take.
pub(super) const UNPARSABLE: &str =
    "Can't parse MCMP message. It might have contained illegal symbols or unknown elements.";

/// A command's parameters, in order: names as sent, values decoded (None for a name with no
/// value after it).
pub(super) struct Parameters(pub(super) Vec<(String, Option<String>)>);

impl Parameters {
    /// Parses a form body: an empty body is one empty name, as mod_manager sees it.
    pub(super) fn parse(body: &[u8]) -> Result<Parameters, McmpError> {
        let text = std::str::from_utf8(body).map_err(|_| syntax(UNPARSABLE))?;
        // mod_manager reads the body as a C string.
        let text = text.split('\0').next().unwrap_or_default();
        let mut tokens = Vec::new();
        for token in text.split(['&', '=']) {
            tokens.push(decode(token).ok_or_else(|| syntax(UNPARSABLE))?);
        }
        let mut pairs = Vec::new();
        let mut tokens = tokens.into_iter();
        while let Some(name) = tokens.next() {
            pairs.push((name, tokens.next()));
        }
        Ok(Parameters(pairs))
    }

    /// The value of `name` (any case): the last one given, as mod_manager keeps the last.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_deref().unwrap_or_default())
    }

    /// The node's route, which every node command needs.
    pub(super) fn route(&self) -> Result<&str, McmpError> {
        match self.get("jvmroute") {
            None | Some("") => Err(syntax("JVMRoute can't be empty")),
            Some(route) => Ok(route),
        }
    }
}

/// `%XX` decoded where `XX` is hex (a `%` before anything else stays), `+` left as it is;
/// None if the result holds `<`, `>`, `"`, `'`, CR or LF, or is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|pair| bytes[i] == b'%' && pair.iter().all(u8::is_ascii_hexdigit))
            .and_then(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    if out
        .iter()
        .any(|byte| matches!(byte, b'<' | b'>' | b'"' | b'\'' | b'\r' | b'\n'))
    {
        return None;
    }
    String::from_utf8(out).ok()
}

/// A comma-separated list of aliases or contexts, each shorter than `limit`; `what` names it
/// in the refusals. The last item may not be empty (nor the whole list).
pub(super) fn list(value: &str, limit: usize, what: &str) -> Result<Vec<String>, McmpError> {
    let items: Vec<String> = value.split(',').map(str::to_string).collect();
    if items.iter().any(|item| item.len() >= limit) {
        return Err(syntax(format!("{what} field too big")));
    }
    if items.last().is_none_or(String::is_empty) {
        return Err(syntax(format!("{what} can't be empty")));
    }
    Ok(items)
}

/// `yes`/`on` or `no`/`off` in any case; None for anything else (the setting stays).
pub(super) fn boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "on" => Some(true),
        "no" | "off" => Some(false),
        _ => None,
    }
}

/// The whole number `value` starts with (after spaces, with its sign; saturated) and what
/// follows it; None if it starts with none.
fn leading_number(value: &str) -> Option<(i64, &str)> {
    let text = value.trim_start();
    let sign = usize::from(text.starts_with(['-', '+']));
    let digits = text[sign..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let end = sign + digits;
    let magnitude = text[sign..end].bytes().fold(0i64, |number, digit| {
        number
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'))
    });
    let number = if text.starts_with('-') {
        -magnitude
    } else {
        magnitude
    };
    Some((number, &text[end..]))
}

fn to_i32(number: i64) -> i32 {
    number.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

/// C's `atoi`: the number a value starts with (saturated), 0 without one.
pub(super) fn atoi(value: &str) -> i32 {
    leading_number(value).map_or(0, |(number, _)| to_i32(number))
}

/// C's `sscanf("%d")`: the number a value starts with (saturated), if it starts with one.
pub(super) fn leading_int(value: &str) -> Option<i32> {
    leading_number(value).map(|(number, _)| to_i32(number))
}

/// httpd's `ap_timeout_parameter_parse`: a whole number (none reads as 0), then a unit told
/// by its first letters, `ms`, `s`, `mi` (minutes) or `h`, or nothing for `default_unit`;
/// microseconds. None for another unit, or below zero.
pub(super) fn duration_us(value: &str, default_unit: &str) -> Option<i64> {
    // With no number read, the unit is what was given, as `strtol` leaves it.
    let (number, unit) = leading_number(value).unwrap_or((0, value));
    if number < 0 {
        return None;
    }
    let unit = if unit.is_empty() { default_unit } else { unit };
    let microseconds = match unit.as_bytes() {
        [b's', ..] => 1_000_000,
        [b'h', ..] => 3_600_000_000,
        [b'm', b's', ..] => 1_000,
        [b'm', b'i', ..] => 60_000_000,
        _ => return None,
    };
    number.checked_mul(microseconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_as_mod_manager_splits_them() {
        let parameters = Parameters::parse(b"JVMRoute=a%2Cb&Load=%zz&x").unwrap();
        assert_eq!(
            parameters.0,
            [
                ("JVMRoute".to_string(), Some("a,b".to_string())),
                ("Load".to_string(), Some("%zz".to_string())),
                ("x".to_string(), None),
            ]
        );
        assert_eq!(Parameters::parse(b"").unwrap().0, [(String::new(), None)]);
        assert!(Parameters::parse(b"Alias=%3Cb%3E").is_err());
        assert!(Parameters::parse(b"Alias=a\r\n").is_err());
    }

    #[test]
    fn numbers_and_durations_read_as_httpd_reads_them() {
        assert_eq!(atoi(" 12abc"), 12);
        assert_eq!(atoi("-3"), -3);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("99999999999999999999999"), i32::MAX);
        assert_eq!(leading_int("+7 "), Some(7));
        assert_eq!(leading_int(" x"), None);
        assert_eq!(duration_us("10", "s"), Some(10_000_000));
        assert_eq!(duration_us("10", "ms"), Some(10_000));
        assert_eq!(duration_us("2mi", "s"), Some(120_000_000));
        assert_eq!(duration_us("1h", "ms"), Some(3_600_000_000));
        assert_eq!(duration_us("5sx", "ms"), Some(5_000_000));
        assert_eq!(duration_us("soon", "ms"), Some(0), "no number, and `s`");
        assert_eq!(duration_us("5x", "s"), None);
        assert_eq!(duration_us("3mx", "s"), None);
        assert_eq!(duration_us("abc", "s"), None);
        assert_eq!(duration_us("-1", "s"), None);
    }

    #[test]
    fn lists_refuse_long_items_and_an_empty_end() {
        assert_eq!(list("a,bb", 3, "Alias").unwrap(), ["a", "bb"]);
        assert!(list("a,bbb", 3, "Alias").is_err());
        assert!(list("a,", 3, "Alias").is_err());
        assert!(list("", 3, "Alias").is_err());
    }
}
