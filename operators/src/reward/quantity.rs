//! Units of an answer: `5 km`, `2.5 hours`, `212°F`, `$5`, `50%`. Conversion factors and offsets
//! are `uom`'s (its SI quantities parse `"5 km"` with their abbreviations and names); the table
//! here only maps the spellings answers use onto uom's: uom's parser matches case-sensitively and
//! exactly (`°C`, `mL`, `mi/h`), spells `meter` but not `metre`, has no week, and knows nothing of
//! money. Currencies are not converted into each other (rates change); a dollar is 100 cents.

use uom::si::f64::{Area, Length, Mass, ThermodynamicTemperature, Time, Velocity, Volume};

/// A physical dimension that uom converts within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dim {
    Length,
    Mass,
    Time,
    Temperature,
    Volume,
    Velocity,
    Area,
}

/// What a unit spelling stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Unit {
    /// A uom unit (its abbreviation), times a factor (a week is 7 `d`).
    Measure(Dim, &'static str, f64),
    /// A currency and its value in that currency's main unit (a cent is 0.01 USD).
    Money(&'static str, f64),
    Percent,
    /// Stripped and ignored: angles' degrees, `units`, counted things.
    Label,
}

use Dim::*;
use Unit::*;

/// Spellings after `strip_latex` (lowercase, `°` and `^\circ` removed: `212°F` reads `212f`).
const SPELLINGS: &[(&[&str], Unit)] = &[
    (
        &["km", "kilometer", "kilometers", "kilometre", "kilometres"],
        Measure(Length, "km", 1.0),
    ),
    (
        &["m", "meter", "meters", "metre", "metres"],
        Measure(Length, "m", 1.0),
    ),
    (
        &[
            "cm",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
        Measure(Length, "cm", 1.0),
    ),
    (
        &[
            "mm",
            "millimeter",
            "millimeters",
            "millimetre",
            "millimetres",
        ],
        Measure(Length, "mm", 1.0),
    ),
    (&["mi", "mile", "miles"], Measure(Length, "mi", 1.0)),
    (&["ft", "foot", "feet"], Measure(Length, "ft", 1.0)),
    // Not "in": "5 in" is more often the start of a phrase than inches.
    (&["inch", "inches"], Measure(Length, "in", 1.0)),
    (&["yd", "yard", "yards"], Measure(Length, "yd", 1.0)),
    (
        &["kg", "kilogram", "kilograms", "kilo", "kilos"],
        Measure(Mass, "kg", 1.0),
    ),
    (&["g", "gram", "grams"], Measure(Mass, "g", 1.0)),
    (&["mg", "milligram", "milligrams"], Measure(Mass, "mg", 1.0)),
    // A pound is a mass here: GSM8K weighs more in pounds than it pays in them (`£` is money).
    (&["lb", "lbs", "pound", "pounds"], Measure(Mass, "lb", 1.0)),
    (&["oz", "ounce", "ounces"], Measure(Mass, "oz", 1.0)),
    (
        &["s", "sec", "secs", "second", "seconds"],
        Measure(Time, "s", 1.0),
    ),
    (
        &["min", "mins", "minute", "minutes"],
        Measure(Time, "min", 1.0),
    ),
    (
        &["h", "hr", "hrs", "hour", "hours"],
        Measure(Time, "h", 1.0),
    ),
    (&["day", "days"], Measure(Time, "d", 1.0)),
    (&["week", "weeks"], Measure(Time, "d", 7.0)),
    // uom's year is 365 days; a month is a twelfth of it, so `12 months` = `1 year`.
    (&["month", "months"], Measure(Time, "a", 1.0 / 12.0)),
    (&["year", "years"], Measure(Time, "a", 1.0)),
    (
        &[
            "c",
            "celsius",
            "degree celsius",
            "degrees celsius",
            "degrees c",
        ],
        Measure(Temperature, "°C", 1.0),
    ),
    (
        &[
            "f",
            "fahrenheit",
            "degree fahrenheit",
            "degrees fahrenheit",
            "degrees f",
        ],
        Measure(Temperature, "°F", 1.0),
    ),
    (&["kelvin", "kelvins"], Measure(Temperature, "K", 1.0)),
    (
        &["l", "liter", "liters", "litre", "litres"],
        Measure(Volume, "L", 1.0),
    ),
    (
        &[
            "ml",
            "milliliter",
            "milliliters",
            "millilitre",
            "millilitres",
        ],
        Measure(Volume, "mL", 1.0),
    ),
    (&["gal", "gallon", "gallons"], Measure(Volume, "gal", 1.0)),
    (&["cup", "cups"], Measure(Volume, "cup", 1.0)),
    (
        &["mph", "mi/h", "mile per hour", "miles per hour"],
        Measure(Velocity, "mi/h", 1.0),
    ),
    (
        &[
            "km/h",
            "kph",
            "kmh",
            "kilometers per hour",
            "kilometres per hour",
        ],
        Measure(Velocity, "km/h", 1.0),
    ),
    (
        &["m/s", "meters per second", "metres per second"],
        Measure(Velocity, "m/s", 1.0),
    ),
    (
        &["sq ft", "square foot", "square feet", "ft^2"],
        Measure(Area, "ft²", 1.0),
    ),
    (
        &[
            "sq m",
            "square meter",
            "square meters",
            "square metre",
            "square metres",
            "m^2",
        ],
        Measure(Area, "m²", 1.0),
    ),
    (&["dollar", "dollars", "usd", "bucks"], Money("USD", 1.0)),
    (&["cent", "cents", "¢"], Money("USD", 0.01)),
    (&["euro", "euros", "eur"], Money("EUR", 1.0)),
    (&["gbp", "pounds sterling"], Money("GBP", 1.0)),
    (&["yen", "jpy"], Money("JPY", 1.0)),
    (&["%", "percent", "per cent"], Percent),
    (&["degree", "degrees", "units", "square units"], Label),
];

/// Currency symbols written before the number.
pub(super) const CURRENCY_SYMBOLS: &[(&str, &str)] = &[
    ("$", "USD"),
    ("usd", "USD"),
    ("€", "EUR"),
    ("£", "GBP"),
    ("¥", "JPY"),
];

/// All spellings, longest first, so `per cent` wins over `cent` and `km/h` over `h`.
pub(super) fn spellings() -> &'static [(&'static str, Unit)] {
    static BY_LENGTH: std::sync::OnceLock<Vec<(&str, Unit)>> = std::sync::OnceLock::new();
    BY_LENGTH.get_or_init(|| {
        let mut all: Vec<(&str, Unit)> = SPELLINGS
            .iter()
            .flat_map(|(names, unit)| names.iter().map(move |n| (*n, *unit)))
            .collect();
        all.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        all
    })
}

/// The value of `v` of a measure in its dimension's SI base unit (kelvin for temperatures, so
/// offsets apply), through uom's own parser.
pub(super) fn base_value(dim: Dim, abbreviation: &str, v: f64) -> Option<f64> {
    let s = format!("{v} {abbreviation}");
    match dim {
        Length => s.parse::<Length>().ok().map(|q| q.value),
        Mass => s.parse::<Mass>().ok().map(|q| q.value),
        Time => s.parse::<Time>().ok().map(|q| q.value),
        Temperature => s.parse::<ThermodynamicTemperature>().ok().map(|q| q.value),
        Volume => s.parse::<Volume>().ok().map(|q| q.value),
        Velocity => s.parse::<Velocity>().ok().map(|q| q.value),
        Area => s.parse::<Area>().ok().map(|q| q.value),
    }
}

/// Two quantities with units in a common dimension (or currency): `Some(equal)`; None when at
/// least one has no convertible unit.
pub(super) fn compare_units(a: (f64, Unit), b: (f64, Unit)) -> Option<bool> {
    match (a.1, b.1) {
        (Measure(da, ua, fa), Measure(db, ub, fb)) => {
            if da != db {
                return Some(false);
            }
            // Temperatures are not scaled (their factor is 1): the offset is uom's.
            let x = base_value(da, ua, a.0 * fa)?;
            let y = base_value(db, ub, b.0 * fb)?;
            Some(super::expr::close(x, y))
        }
        (Money(ca, fa), Money(cb, fb)) => Some(ca == cb && super::expr::close(a.0 * fa, b.0 * fb)),
        (Measure(..), Money(..)) | (Money(..), Measure(..)) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(s: &str) -> Unit {
        spellings().iter().find(|(n, _)| *n == s).unwrap().1
    }

    #[test]
    fn conversions_within_a_dimension() {
        for ((a, ua), (b, ub)) in [
            ((5.0, "km"), (5000.0, "m")),
            ((2.5, "hours"), (150.0, "minutes")),
            ((2.0, "kg"), (2000.0, "g")),
            ((212.0, "f"), (100.0, "c")),
            ((0.0, "degrees celsius"), (32.0, "f")),
            ((3.0, "feet"), (36.0, "inches")),
            ((2.0, "liters"), (2000.0, "ml")),
            ((14.0, "days"), (2.0, "weeks")),
            ((60.0, "mph"), (60.0, "miles per hour")),
            ((16.0, "oz"), (1.0, "lb")),
            ((250.0, "cents"), (2.5, "dollars")),
            ((12.0, "months"), (1.0, "year")),
        ] {
            assert_eq!(
                compare_units((a, unit(ua)), (b, unit(ub))),
                Some(true),
                "{a} {ua} = {b} {ub}"
            );
        }
    }

    #[test]
    fn other_values_dimensions_and_currencies_differ() {
        for ((a, ua), (b, ub)) in [
            ((500.0, "m"), (5.0, "km")),
            ((5.0, "miles"), (5.0, "km")),
            ((1.5, "minutes"), (1.5, "hours")),
            ((2.0, "kg"), (2.0, "lb")),
            ((100.0, "f"), (100.0, "c")),
            ((12.0, "kg"), (12.0, "km")),
            ((5.0, "euros"), (5.0, "dollars")),
            ((5.0, "dollars"), (5.0, "kg")),
        ] {
            assert_eq!(
                compare_units((a, unit(ua)), (b, unit(ub))),
                Some(false),
                "{a} {ua} != {b} {ub}"
            );
        }
        assert_eq!(compare_units((5.0, unit("%")), (5.0, unit("km"))), None);
    }
}
