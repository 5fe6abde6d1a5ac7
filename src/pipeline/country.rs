//! Stage 2, map country codes: the sender's format → ISO 3166-1 alpha-2 in the hub, and the
//! hub's alpha-2 → each receiver's format on the way out.
//!
//! Formats (per application, `country_code_format`): `iso2` (`US`), `iso3` (`USA`), or
//! `alternate` — the application's own table (`{ UK = "GB" }`), with ISO alpha-2 for codes the
//! table does not list (CRM's AlternateCode is optional per country). Codes are compared
//! case-insensitively. The ISO table is the `rust_iso3166` crate's, never hand-typed.
//!
//! Failure: an unmappable code is rejected `unknown_country_code`, naming the code and path.

use crate::bod::{clipped, MAX_MESSAGE};
use crate::config::{Application, CountryCodeFormat};

use super::{Decision, Doc, Rejection, Stage};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{path}: country code {code:?} is not a known {format} code")]
pub struct CountryError {
    pub code: String,
    pub format: &'static str,
    pub path: String,
}

impl From<CountryError> for Rejection {
    fn from(e: CountryError) -> Rejection {
        Rejection {
            stage: Stage::Country,
            code: "unknown_country_code",
            path: Some(e.path.clone()),
            message: clipped(&e.to_string(), MAX_MESSAGE).into_owned(),
        }
    }
}

fn format_name(format: CountryCodeFormat) -> &'static str {
    match format {
        CountryCodeFormat::Iso2 => "ISO 3166-1 alpha-2",
        CountryCodeFormat::Iso3 => "ISO 3166-1 alpha-3",
        CountryCodeFormat::Alternate => "alternate or ISO 3166-1 alpha-2",
    }
}

/// The sender's code → ISO alpha-2.
pub fn to_iso2(code: &str, app: &Application) -> Option<&'static str> {
    let upper = code.trim().to_ascii_uppercase();
    match app.country_code_format {
        CountryCodeFormat::Iso2 => rust_iso3166::from_alpha2(&upper).map(|c| c.alpha2),
        CountryCodeFormat::Iso3 => rust_iso3166::from_alpha3(&upper).map(|c| c.alpha2),
        CountryCodeFormat::Alternate => app
            .alternate_country_codes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&upper))
            .and_then(|(_, iso)| rust_iso3166::from_alpha2(&iso.to_ascii_uppercase()))
            .or_else(|| rust_iso3166::from_alpha2(&upper))
            .map(|c| c.alpha2),
    }
}

/// ISO alpha-2 → the receiver's format.
pub fn from_iso2(iso2: &str, app: &Application) -> String {
    match app.country_code_format {
        CountryCodeFormat::Iso2 => iso2.to_string(),
        CountryCodeFormat::Iso3 => rust_iso3166::from_alpha2(iso2)
            .map(|c| c.alpha3.to_string())
            .unwrap_or_else(|| iso2.to_string()),
        CountryCodeFormat::Alternate => app
            .alternate_country_codes
            .iter()
            .find(|(_, iso)| iso.eq_ignore_ascii_case(iso2))
            .map(|(alt, _)| alt.clone())
            .unwrap_or_else(|| iso2.to_string()),
    }
}

/// Maps every item's country code in place.
pub fn map_inbound(doc: &mut Doc, app: &Application) -> Result<(), CountryError> {
    for item in &mut doc.items {
        let Some(raw) = item.raw_country.as_deref() else {
            item.notes
                .push(Decision::new(Stage::Country, "no country code sent"));
            continue;
        };
        let iso = to_iso2(raw, app).ok_or_else(|| CountryError {
            code: raw.to_string(),
            format: format_name(app.country_code_format),
            path: item.country_path.clone(),
        })?;
        if let Some(address) = &mut item.fields.address {
            address.country = Some(iso.to_string());
        }
        let how = match app.country_code_format {
            CountryCodeFormat::Iso2 => "iso2",
            CountryCodeFormat::Iso3 => "iso3",
            CountryCodeFormat::Alternate => "alternate",
        };
        item.notes.push(Decision::new(
            Stage::Country,
            format!("country {raw}→{iso} ({how})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn app(format: &str) -> Application {
        let cfg = Config::from_toml(
            &format!(
                "[[applications]]\nname='a'\nlogical_id='lid://a'\ncountry_code_format='{format}'\nalternate_country_codes={{ UK = 'GB', EL = 'GR' }}\n"
            ),
            "t",
        )
        .unwrap();
        cfg.applications[0].clone()
    }

    #[test]
    fn each_format_maps_both_ways() {
        let iso2 = app("iso2");
        assert_eq!(to_iso2("de", &iso2), Some("DE"));
        assert_eq!(to_iso2("DEU", &iso2), None);
        assert_eq!(to_iso2("UK", &iso2), None, "UK is not ISO");
        assert_eq!(from_iso2("DE", &iso2), "DE");

        let iso3 = app("iso3");
        assert_eq!(to_iso2("USA", &iso3), Some("US"));
        assert_eq!(to_iso2("US", &iso3), None);
        assert_eq!(from_iso2("GB", &iso3), "GBR");

        let alt = app("alternate");
        assert_eq!(to_iso2("uk", &alt), Some("GB"));
        assert_eq!(
            to_iso2("FR", &alt),
            Some("FR"),
            "codes the table lacks are ISO"
        );
        assert_eq!(to_iso2("XX", &alt), None);
        assert_eq!(from_iso2("GB", &alt), "UK");
        assert_eq!(from_iso2("GR", &alt), "EL");
        assert_eq!(from_iso2("FR", &alt), "FR");
    }
}
