//! Stage 3, assign owner: which hub user owns the record (DESIGN §3 "assign owner").
//!
//! If the sender's application has a `sales_person_role`, the noun's `SalesPersonReference`
//! with that `SalesPersonRole` names the owner, found among `[[users]]` by personnel number,
//! then external personnel number, then first + last name. Otherwise — no role configured, no
//! such reference, no such user — the application's `default_record_owner`. New accounts get
//! the matched user as account manager, else `default_account_manager`.
//!
//! Never fails: an unknown sales person is a fallback with a reason, not an error.

use crate::bod::{pick_language, SalesPerson};
use crate::config::{Application, Config, User};
use crate::store::Owner;

use super::{Decision, Doc, Stage};

/// How a sales person reference matched a user.
fn find_user<'a>(
    sp: &SalesPerson,
    users: &'a [User],
    language: &str,
) -> Option<(&'a User, String)> {
    if let Some(id) = sp.id.as_deref() {
        if let Some(u) = users
            .iter()
            .find(|u| u.personnel_number.as_deref() == Some(id))
        {
            return Some((u, format!("matched personnel number {id}")));
        }
        if let Some(u) = users
            .iter()
            .find(|u| u.external_personnel_number.as_deref() == Some(id))
        {
            return Some((u, format!("matched external personnel number {id}")));
        }
    }
    let name = pick_language(&sp.names, language)?;
    let wanted = normalize_name(name);
    users
        .iter()
        .find(|u| match (&u.first_name, &u.last_name) {
            (Some(f), Some(l)) => {
                wanted == normalize_name(&format!("{f} {l}"))
                    || wanted == normalize_name(&format!("{l}, {f}"))
            }
            _ => false,
        })
        .map(|u| (u, format!("matched name {name:?}")))
}

fn normalize_name(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Decides owner and account manager for every item of a document.
pub fn assign(doc: &mut Doc, app: &Application, config: &Config) {
    for item in &mut doc.items {
        let (matched, reason) = decide(&item.sales_persons, app, config);
        item.owner = Owner {
            owner: matched.clone().or_else(|| app.default_record_owner.clone()),
            account_manager: matched.or_else(|| app.default_account_manager.clone()),
        };
        let who = item.owner.owner.as_deref().unwrap_or("(none)");
        item.notes.push(Decision::new(
            Stage::Owner,
            format!("owner {who}: {reason}"),
        ));
    }
}

fn decide(refs: &[SalesPerson], app: &Application, config: &Config) -> (Option<String>, String) {
    let Some(role) = app.sales_person_role.as_deref() else {
        return (
            None,
            "no sales_person_role configured, default record owner".into(),
        );
    };
    let Some(sp) = refs.iter().find(|s| {
        s.role
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(role))
    }) else {
        return (
            None,
            format!("no SalesPersonReference with role {role}, default record owner"),
        );
    };
    match find_user(sp, &config.users, &app.language_code) {
        Some((user, how)) => (
            Some(user.id.clone()),
            format!("SalesPersonReference role {role}, {how}"),
        ),
        None => (
            None,
            format!(
                "SalesPersonReference role {role} (ID {}) matches no user, default record owner",
                sp.id.as_deref().unwrap_or("none")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bod::LangText;

    fn config() -> Config {
        Config::from_toml(
            r#"
[[users]]
id = "U-JSMITH"
first_name = "Jane"
last_name = "Smith"
personnel_number = "1001"
external_personnel_number = "SP01"
[[users]]
id = "U-BOB"
first_name = "Bob"
last_name = "Stone"
[[users]]
id = "U-ADMIN"
[[applications]]
name = "ln"
logical_id = "lid://ln"
sales_person_role = "Internal"
default_record_owner = "U-ADMIN"
"#,
            "t",
        )
        .unwrap()
    }

    fn sp(id: Option<&str>, name: Option<&str>, role: &str) -> SalesPerson {
        SalesPerson {
            id: id.map(str::to_string),
            names: name
                .map(|n| {
                    vec![LangText {
                        lang: None,
                        text: n.into(),
                    }]
                })
                .unwrap_or_default(),
            role: Some(role.into()),
        }
    }

    #[test]
    fn lookup_order_is_personnel_external_then_name() {
        let cfg = config();
        let app = &cfg.applications[0];
        let d = |refs: Vec<SalesPerson>| decide(&refs, app, &cfg).0;
        assert_eq!(
            d(vec![sp(Some("1001"), None, "Internal")]).as_deref(),
            Some("U-JSMITH")
        );
        assert_eq!(
            d(vec![sp(Some("SP01"), None, "Internal")]).as_deref(),
            Some("U-JSMITH")
        );
        assert_eq!(
            d(vec![sp(None, Some("bob  STONE"), "internal")]).as_deref(),
            Some("U-BOB")
        );
        assert_eq!(
            d(vec![sp(None, Some("Stone, Bob"), "Internal")]).as_deref(),
            Some("U-BOB")
        );
        assert_eq!(
            d(vec![sp(Some("1001"), None, "External")]),
            None,
            "role must match"
        );
        assert_eq!(d(vec![sp(Some("999"), None, "Internal")]), None);
    }
}
