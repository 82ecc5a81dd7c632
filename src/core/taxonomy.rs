//! Taxonomies bundled in `data/taxonomy/`: AssurAI risk factors, KSAFE-MM
//! categories, and the project's mapping between them.

use serde::Deserialize;
use std::sync::OnceLock;

use crate::core::sample::Category;

#[derive(Debug, Deserialize)]
struct AssuraiFile {
    group: Vec<NamedGroup>,
    risk: Vec<RiskEntry>,
}
#[derive(Debug, Deserialize)]
struct NamedGroup {
    name: String,
}
#[derive(Debug, Deserialize, Clone)]
pub struct RiskEntry {
    pub code: String,
    pub name: String,
    pub group: String,
}

#[derive(Debug, Deserialize)]
struct KsafeFile {
    category: Vec<KsafeCategory>,
}
#[derive(Debug, Deserialize, Clone)]
pub struct KsafeCategory {
    pub name: String,
    pub domain: String,
}

#[derive(Debug, Deserialize)]
struct MappingFile {
    map: Vec<MapEntry>,
}
#[derive(Debug, Deserialize, Clone)]
pub struct MapEntry {
    pub ksafe_mm: String,
    pub assurai_groups: Vec<String>,
    pub assurai_risks: Vec<String>,
    pub basis: String,
}

pub const ASSURAI_TOML: &str = include_str!("../../data/taxonomy/assurai.toml");
pub const KSAFE_TOML: &str = include_str!("../../data/taxonomy/ksafe_mm.toml");
pub const MAPPING_TOML: &str = include_str!("../../data/taxonomy/mapping.toml");

pub struct Taxonomies {
    pub assurai_groups: Vec<String>,
    pub assurai_risks: Vec<RiskEntry>,
    pub ksafe: Vec<KsafeCategory>,
    pub mapping: Vec<MapEntry>,
}

/// The bundled taxonomies (parsed once; the files are compiled in).
pub fn get() -> &'static Taxonomies {
    static T: OnceLock<Taxonomies> = OnceLock::new();
    T.get_or_init(|| {
        let a: AssuraiFile = toml::from_str(ASSURAI_TOML).expect("bundled assurai.toml parses");
        let k: KsafeFile = toml::from_str(KSAFE_TOML).expect("bundled ksafe_mm.toml parses");
        let m: MappingFile = toml::from_str(MAPPING_TOML).expect("bundled mapping.toml parses");
        Taxonomies {
            assurai_groups: a.group.into_iter().map(|g| g.name).collect(),
            assurai_risks: a.risk,
            ksafe: k.category,
            mapping: m.map,
        }
    })
}

/// Parse an AssurAI risk code (`R03`, `r3`, `R03 Violent Acts`, `R03_Violent...`).
/// Returns the normalised code and the name that followed it (may be empty).
pub fn parse_assurai_risk(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    let rest = s.strip_prefix('R').or_else(|| s.strip_prefix('r'))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || digits.len() > 2 {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    if !(1..=35).contains(&n) {
        return None;
    }
    let name = rest[digits.len()..]
        .trim_start_matches([' ', '_', '-', ':', '.', ')'])
        .trim();
    Some((format!("R{n:02}"), name.replace('_', " ")))
}

/// Build the AssurAI category for a `risk` value. A name and group given by
/// the data win over the bundled (confirmed) ones only where the bundled
/// taxonomy has none.
pub fn assurai_category(raw: &str, group_from_data: Option<&str>) -> Option<Category> {
    let (code, name_in_data) = parse_assurai_risk(raw)?;
    let known = get().assurai_risks.iter().find(|r| r.code == code);
    let name = match known {
        Some(k) => k.name.clone(),
        None => name_in_data,
    };
    let group = match known {
        Some(k) => k.group.clone(),
        None => group_from_data.map(str::to_string).unwrap_or_default(),
    };
    Some(Category {
        taxonomy: "assurai".into(),
        code,
        name,
        group,
    })
}

/// Match a KSAFE-MM category name loosely (case, spaces, `&`/`and`, `_`).
pub fn ksafe_category(raw: &str) -> Option<Category> {
    fn norm(s: &str) -> String {
        s.to_ascii_lowercase()
            .replace('&', "and")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect()
    }
    let n = norm(raw);
    get()
        .ksafe
        .iter()
        .find(|c| norm(&c.name) == n)
        .map(|c| Category {
            taxonomy: "ksafe-mm".into(),
            code: c.name.clone(),
            name: c.name.clone(),
            group: c.domain.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_taxonomies_are_complete() {
        let t = get();
        assert_eq!(t.assurai_groups.len(), 6);
        assert_eq!(
            t.assurai_risks.len(),
            10,
            "only R01-R10 names are confirmed"
        );
        assert_eq!(t.ksafe.len(), 11);
        let domains: std::collections::BTreeSet<_> =
            t.ksafe.iter().map(|c| c.domain.as_str()).collect();
        assert_eq!(domains.len(), 3);
        for m in &t.mapping {
            assert!(ksafe_category(&m.ksafe_mm).is_some(), "{}", m.ksafe_mm);
            for g in &m.assurai_groups {
                assert!(t.assurai_groups.contains(g), "{g}");
            }
        }
        assert_eq!(t.mapping.len(), 11);
    }

    #[test]
    fn risk_codes_parse() {
        assert_eq!(
            parse_assurai_risk("R03 Violent Acts"),
            Some(("R03".into(), "Violent Acts".into()))
        );
        assert_eq!(parse_assurai_risk("r7"), Some(("R07".into(), "".into())));
        assert_eq!(parse_assurai_risk("R36 Foo"), None);
        assert_eq!(parse_assurai_risk("X01"), None);
        let c = assurai_category(
            "R20 Something From Data",
            Some("Misinformation & Manipulation"),
        )
        .unwrap();
        assert_eq!(c.name, "Something From Data");
        assert_eq!(c.group, "Misinformation & Manipulation");
        let c = assurai_category("R03 wrong name in data", None).unwrap();
        assert_eq!(c.name, "Violent Acts");
        assert_eq!(
            ksafe_category("hate & unfairness").unwrap().group,
            "Content Safety"
        );
    }
}
