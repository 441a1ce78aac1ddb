//! GB/T 2260 administrative region codes of the province (DOMAIN.md §7).
//!
//! The service knows Guangdong (`440000`) and its 21 prefecture-level cities, preloaded as a
//! `static` table. A region code is six ASCII digits: `xx0000` for a province, `xxyy00` for a
//! city (`yy` ≠ `00`). County-level codes (`440103`, a district of Guangzhou) are not in the
//! table: keys are derived per city (F2), never per county, so the service has no use for them.
//!
//! ```
//! use sscard_kms::card::region::{self, Region, RegionLevel};
//!
//! let shenzhen = Region::lookup("440300")?;
//! assert_eq!(shenzhen.name_en, "Shenzhen");
//! assert_eq!(shenzhen.level, RegionLevel::City);
//! assert_eq!(region::province_of("440300")?.code, "440000");
//! assert!(region::is_city("445300"));
//! assert!(!region::is_city("440000"));
//! assert!(Region::lookup("440103").is_err()); // a district, not a city
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use core::fmt;

use crate::card::identifiers::IdentifierFault;
use crate::error::{Error, Result};

/// Level of a region in the key hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionLevel {
    /// A province (`xx0000`): owner of the provincial keys and of the card master key root.
    Province,
    /// A prefecture-level city (`xxyy00`): the level of the city factor F2.
    City,
}

/// One region of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// The 6-digit GB/T 2260 code.
    pub code: &'static str,
    /// Official Chinese name.
    pub name_zh: &'static str,
    /// Pinyin / English name.
    pub name_en: &'static str,
    /// Province or city.
    pub level: RegionLevel,
}

/// Guangdong province.
pub static GUANGDONG: Region = Region {
    code: "440000",
    name_zh: "广东省",
    name_en: "Guangdong",
    level: RegionLevel::Province,
};

const fn city(code: &'static str, name_zh: &'static str, name_en: &'static str) -> Region {
    Region {
        code,
        name_zh,
        name_en,
        level: RegionLevel::City,
    }
}

/// Guangdong's 21 prefecture-level cities, in code order, exactly as DOMAIN.md §7 lists them.
pub static GUANGDONG_CITIES: [Region; 21] = [
    city("440100", "广州市", "Guangzhou"),
    city("440200", "韶关市", "Shaoguan"),
    city("440300", "深圳市", "Shenzhen"),
    city("440400", "珠海市", "Zhuhai"),
    city("440500", "汕头市", "Shantou"),
    city("440600", "佛山市", "Foshan"),
    city("440700", "江门市", "Jiangmen"),
    city("440800", "湛江市", "Zhanjiang"),
    city("440900", "茂名市", "Maoming"),
    city("441200", "肇庆市", "Zhaoqing"),
    city("441300", "惠州市", "Huizhou"),
    city("441400", "梅州市", "Meizhou"),
    city("441500", "汕尾市", "Shanwei"),
    city("441600", "河源市", "Heyuan"),
    city("441700", "阳江市", "Yangjiang"),
    city("441800", "清远市", "Qingyuan"),
    city("441900", "东莞市", "Dongguan"),
    city("442000", "中山市", "Zhongshan"),
    city("445100", "潮州市", "Chaozhou"),
    city("445200", "揭阳市", "Jieyang"),
    city("445300", "云浮市", "Yunfu"),
];

/// The first two digits of every province-level division of GB/T 2260 (31 provinces,
/// autonomous regions and municipalities, `71` Taiwan, `81` Hong Kong, `82` Macao) and `83`, the
/// prefix of the residence permits of Taiwan residents (whose Hong Kong and Macao permits use
/// `81` and `82`). A social security number is a citizen ID of any of them: people move, and a
/// Guangdong card is issued to whoever works there. County-level codes are not checked: codes
/// are abolished and renumbered over the years, and an ID keeps the code it was issued under.
pub static PROVINCE_LEVEL_PREFIXES: [&str; 35] = [
    "11", "12", "13", "14", "15", // Beijing, Tianjin, Hebei, Shanxi, Inner Mongolia
    "21", "22", "23", // Liaoning, Jilin, Heilongjiang
    "31", "32", "33", "34", "35", "36", "37", // Shanghai … Shandong
    "41", "42", "43", "44", "45", "46", // Henan … Hainan
    "50", "51", "52", "53", "54", // Chongqing, Sichuan, Guizhou, Yunnan, Tibet
    "61", "62", "63", "64", "65", // Shaanxi, Gansu, Qinghai, Ningxia, Xinjiang
    "71", "81", "82", "83", // Taiwan, Hong Kong, Macao; Taiwan residents' permits
];

/// True if `prefix` is the two-digit code of a province-level division
/// ([`PROVINCE_LEVEL_PREFIXES`]).
pub fn is_province_level_prefix(prefix: &str) -> bool {
    PROVINCE_LEVEL_PREFIXES.contains(&prefix)
}

/// Every region the service knows: the provinces first, then the cities.
pub fn all() -> impl Iterator<Item = &'static Region> {
    core::iter::once(&GUANGDONG).chain(GUANGDONG_CITIES.iter())
}

impl Region {
    /// The region of `code`; an unknown or malformed code is refused as field `region`.
    pub fn lookup(code: &str) -> Result<&'static Region> {
        Region::lookup_field("region", code)
    }

    /// As [`Region::lookup`], naming `field` in the error (e.g. `"issuing_region"`).
    pub fn lookup_field(field: &'static str, code: &str) -> Result<&'static Region> {
        let b = code.as_bytes();
        if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
            return Err(Error::InvalidIdentifier {
                field,
                reason: IdentifierFault::Malformed,
            });
        }
        all()
            .find(|r| r.code == code)
            .ok_or(Error::InvalidIdentifier {
                field,
                reason: IdentifierFault::UnknownRegion,
            })
    }

    /// The city of `code`, refusing a known province code as [`IdentifierFault::NotACity`].
    pub fn lookup_city(field: &'static str, code: &str) -> Result<&'static Region> {
        let region = Region::lookup_field(field, code)?;
        if region.is_city() {
            Ok(region)
        } else {
            Err(Error::InvalidIdentifier {
                field,
                reason: IdentifierFault::NotACity,
            })
        }
    }

    /// True for a city.
    pub fn is_city(&self) -> bool {
        self.level == RegionLevel::City
    }

    /// The province the region belongs to (itself for a province).
    pub fn province(&self) -> &'static Region {
        // Only one province is loaded; every known city is in it.
        &GUANGDONG
    }

    /// The cities of this province (empty for a city).
    pub fn cities(&self) -> impl Iterator<Item = &'static Region> + use<> {
        let prefix = self.code.get(..2).unwrap_or_default();
        let is_province = self.level == RegionLevel::Province;
        GUANGDONG_CITIES
            .iter()
            .filter(move |c| is_province && c.code.starts_with(prefix))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.code, self.name_zh, self.name_en)
    }
}

/// The region of `code` (see [`Region::lookup`]).
pub fn lookup(code: &str) -> Result<&'static Region> {
    Region::lookup(code)
}

/// The province of the region `code` (a province is its own province).
pub fn province_of(code: &str) -> Result<&'static Region> {
    Ok(Region::lookup(code)?.province())
}

/// True if `code` is a known city; false for a province, an unknown or a malformed code.
pub fn is_city(code: &str) -> bool {
    Region::lookup(code).is_ok_and(Region::is_city)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_domain_section_7() {
        let codes: Vec<&str> = GUANGDONG_CITIES.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            [
                "440100", "440200", "440300", "440400", "440500", "440600", "440700", "440800",
                "440900", "441200", "441300", "441400", "441500", "441600", "441700", "441800",
                "441900", "442000", "445100", "445200", "445300"
            ]
        );
        let names: Vec<&str> = GUANGDONG_CITIES.iter().map(|r| r.name_en).collect();
        assert_eq!(
            names,
            [
                "Guangzhou",
                "Shaoguan",
                "Shenzhen",
                "Zhuhai",
                "Shantou",
                "Foshan",
                "Jiangmen",
                "Zhanjiang",
                "Maoming",
                "Zhaoqing",
                "Huizhou",
                "Meizhou",
                "Shanwei",
                "Heyuan",
                "Yangjiang",
                "Qingyuan",
                "Dongguan",
                "Zhongshan",
                "Chaozhou",
                "Jieyang",
                "Yunfu"
            ]
        );
        assert_eq!(all().count(), 22);
        assert_eq!(GUANGDONG.cities().count(), 21);
        for c in &GUANGDONG_CITIES {
            assert!(c.code.starts_with("44") && c.code.ends_with("00") && &c.code[2..4] != "00");
            assert_eq!(c.cities().count(), 0);
        }
    }

    #[test]
    fn province_level_prefixes() {
        for p in ["11", "44", "65", "71", "81", "82", "83"] {
            assert!(is_province_level_prefix(p), "{p}");
        }
        for p in [
            "00", "10", "16", "24", "47", "66", "72", "84", "99", "4", "440",
        ] {
            assert!(!is_province_level_prefix(p), "{p}");
        }
        assert!(is_province_level_prefix(&GUANGDONG.code[..2]));
    }

    #[test]
    fn lookup_and_levels() {
        let gz = Region::lookup("440100").unwrap();
        assert_eq!(gz.name_zh, "广州市");
        assert!(gz.is_city());
        assert_eq!(gz.province(), &GUANGDONG);
        assert_eq!(gz.to_string(), "440100 广州市 (Guangzhou)");
        assert_eq!(province_of("445300").unwrap().code, "440000");
        assert_eq!(province_of("440000").unwrap().code, "440000");
        assert!(is_city("441900"));
        assert!(!is_city("440000"));
        assert!(!is_city("441000")); // no such city
        assert!(!is_city("44010"));
        assert_eq!(lookup("440000").unwrap().level, RegionLevel::Province);
    }

    #[test]
    fn unknown_codes_name_the_field() {
        for (code, reason) in [
            ("441000", IdentifierFault::UnknownRegion), // 4410 does not exist
            ("440103", IdentifierFault::UnknownRegion), // a district of Guangzhou
            ("110000", IdentifierFault::UnknownRegion), // another province
            ("4401", IdentifierFault::Malformed),
            ("44O100", IdentifierFault::Malformed),
            ("", IdentifierFault::Malformed),
        ] {
            let err = Region::lookup_field("issuing_region", code).unwrap_err();
            assert!(
                matches!(err, Error::InvalidIdentifier { field: "issuing_region", reason: r } if r == reason),
                "{code}: {err}"
            );
            assert!(err.to_string().contains("issuing_region"));
        }
        assert!(matches!(
            Region::lookup("441000"),
            Err(Error::InvalidIdentifier {
                field: "region",
                ..
            })
        ));
        assert!(matches!(
            Region::lookup_city("region", "440000"),
            Err(Error::InvalidIdentifier {
                reason: IdentifierFault::NotACity,
                ..
            })
        ));
        assert_eq!(
            Region::lookup_city("region", "440300").unwrap().name_en,
            "Shenzhen"
        );
    }
}
