//! Deterministic synthetic BODs for benchmarks and load tests.
//!
//! [`Generator`] yields realistic `SyncCustomerPartyMaster` documents (~3.4 KB: Text and
//! Discrete addresses, several communications, sales person references, UserArea pairs) from
//! three applications with different country code formats, in a reproducible mix of new
//! accounts, updates, exact re-deliveries (duplicates), out-of-order older variations (stale)
//! and invalid documents. The same seed always yields the same bytes, so runs compare.
//!
//! [`CONFIG`] is the matching configuration (`bodflow generate` writes it next to the files).

/// Configuration for generated documents.
pub const CONFIG: &str = r#"# Written by `bodflow generate`: the applications generated documents come from.
[hub]
logical_id = "lid://bodflow.hub"
tenant = "LOAD"

[[users]]
id = "U-ADMIN"
[[users]]
id = "U-SALES"
[[users]]
id = "U-JSMITH"
first_name = "Jane"
last_name = "Smith"
personnel_number = "1001"

[[applications]]
name = "ERP Europe"
logical_id = "lid://load.erp.eu"
country_code_format = "iso3"
sales_person_role = "Internal"
default_record_owner = "U-ADMIN"
default_account_manager = "U-SALES"

[[applications]]
name = "ERP UK"
logical_id = "lid://load.erp.uk"
country_code_format = "alternate"
alternate_country_codes = { UK = "GB" }
default_record_owner = "U-ADMIN"

[[applications]]
name = "CRM"
logical_id = "lid://load.crm"
country_code_format = "iso2"
default_record_owner = "U-ADMIN"
"#;

/// What a generated document is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Update,
    Duplicate,
    Stale,
    Invalid,
}

/// One generated document.
#[derive(Debug, Clone)]
pub struct Generated {
    pub index: usize,
    pub kind: Kind,
    pub bytes: Vec<u8>,
}

/// The proportions of the mix, in percent (the rest are new accounts).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub update: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub invalid: u64,
}

impl Mix {
    /// 60 % new, 25 % updates, 5 % each duplicates, stale and invalid.
    pub const REALISTIC: Mix = Mix {
        update: 25,
        duplicate: 5,
        stale: 5,
        invalid: 5,
    };
    /// Only new accounts.
    pub const NEW_ONLY: Mix = Mix {
        update: 0,
        duplicate: 0,
        stale: 0,
        invalid: 0,
    };
}

/// SplitMix64: tiny, deterministic, good enough to pick from a mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

const SENDERS: [(&str, &[&str]); 3] = [
    ("lid://load.erp.eu", &["DEU", "FRA", "NLD", "AUT", "BEL"]),
    ("lid://load.erp.uk", &["UK", "IE", "UK", "FR"]),
    ("lid://load.crm", &["US", "CA", "DE", "GB", "ES"]),
];

const CITIES: [&str; 6] = ["Berlin", "Lyon", "Utrecht", "Graz", "Ghent", "Leeds"];
const STREETS: [&str; 5] = [
    "Hauptstrasse",
    "Rue de la Paix",
    "Kerkstraat",
    "Market Street",
    "Ringweg",
];

/// An iterator of generated documents.
pub struct Generator {
    rng: Rng,
    mix: Mix,
    index: usize,
    /// (sender index, customer number, latest variation) of accounts generated so far.
    accounts: Vec<(usize, u64, u64)>,
    /// Documents generated so far, for exact re-deliveries (bounded).
    recent: Vec<Vec<u8>>,
}

impl Generator {
    pub fn new(seed: u64, mix: Mix) -> Generator {
        Generator {
            rng: Rng(seed),
            mix,
            index: 0,
            accounts: Vec::new(),
            recent: Vec::new(),
        }
    }

    fn pick_kind(&mut self) -> Kind {
        let roll = self.rng.below(100);
        let m = self.mix;
        let have = !self.accounts.is_empty();
        if roll < m.update && have {
            Kind::Update
        } else if roll < m.update + m.duplicate && !self.recent.is_empty() {
            Kind::Duplicate
        } else if roll < m.update + m.duplicate + m.stale && have {
            Kind::Stale
        } else if roll < m.update + m.duplicate + m.stale + m.invalid {
            Kind::Invalid
        } else {
            Kind::New
        }
    }

    fn document(&mut self, kind: Kind) -> Vec<u8> {
        let (sender, number, variation, broken) = match kind {
            Kind::New | Kind::Invalid => {
                let sender = self.rng.below(SENDERS.len() as u64) as usize;
                let number = self.accounts.len() as u64 + 100_000;
                self.accounts.push((sender, number, 1));
                (sender, number, 1, kind == Kind::Invalid)
            }
            Kind::Update => {
                let at = self.rng.below(self.accounts.len() as u64) as usize;
                self.accounts[at].2 += 1;
                let (s, n, v) = self.accounts[at];
                (s, n, v, false)
            }
            Kind::Stale | Kind::Duplicate => {
                let at = self.rng.below(self.accounts.len() as u64) as usize;
                let (s, n, v) = self.accounts[at];
                (s, n, v.saturating_sub(1), false)
            }
        };
        let (lid, countries) = SENDERS[sender];
        let country = countries[self.rng.below(countries.len() as u64) as usize];
        let city = CITIES[self.rng.below(CITIES.len() as u64) as usize];
        let street = STREETS[self.rng.below(STREETS.len() as u64) as usize];
        let house = self.rng.below(300) + 1;
        let postal = 10_000 + self.rng.below(89_999);
        let phone = 1_000_000 + self.rng.below(8_999_999);
        let i = self.index;
        let name = if broken && i.is_multiple_of(2) {
            String::new()
        } else {
            format!("Customer {number} Handelsgesellschaft mbH")
        };
        let country = if broken && i % 2 == 1 { "ZZZ" } else { country };
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<SyncCustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2" versionID="2.14.0">
  <ApplicationArea>
    <Sender>
      <LogicalID>{lid}</LogicalID>
      <ComponentID>erp</ComponentID>
      <ConfirmationCode>OnError</ConfirmationCode>
    </Sender>
    <CreationDateTime>2026-03-01T10:{min:02}:{sec:02}.000Z</CreationDateTime>
    <BODID>infor-nid:LOAD:100:S1:{number}:?CustomerPartyMaster&amp;verb=Sync&amp;variationID={variation}</BODID>
  </ApplicationArea>
  <DataArea>
    <Sync>
      <TenantID>LOAD</TenantID>
      <AccountingEntityID>100</AccountingEntityID>
      <LocationID>S1</LocationID>
      <ActionCriteria>
        <ActionExpression actionCode="Change"/>
      </ActionCriteria>
    </Sync>
    <CustomerPartyMaster>
      <PartyIDs>
        <ID accountingEntity="100" lid="{lid}" variationID="{variation}">{number}</ID>
      </PartyIDs>
      <Name languageID="en-US">{name}</Name>
      <CurrencyCode>EUR</CurrencyCode>
      <Status>
        <Code>Open</Code>
      </Status>
      <PaymentTermID>N30</PaymentTermID>
      <SalesPersonReference>
        <IDs>
          <ID>{sp}</ID>
        </IDs>
        <Name languageID="en-US">Jane Smith</Name>
        <SalesPersonRole>Internal</SalesPersonRole>
      </SalesPersonReference>
      <LastModificationDateTime>2026-03-01T10:{min:02}:{sec:02}Z</LastModificationDateTime>
      <Location>
        <Name>Head office</Name>
        <Address type="Text">
          <AttentionOfName>Accounts Payable</AttentionOfName>
          <AddressLine sequence="1">{street} {house}</AddressLine>
          <AddressLine sequence="2">Building {b}</AddressLine>
          <AddressLine sequence="3">
          </AddressLine>
          <CityName>{city}</CityName>
          <CountrySubDivisionCode>R{region}</CountrySubDivisionCode>
          <CountryCode listID="Countries">{country}</CountryCode>
          <PostalCode>{postal}</PostalCode>
        </Address>
        <Address type="Discrete">
          <AttentionOfName>Accounts Payable</AttentionOfName>
          <BuildingNumber>{house}</BuildingNumber>
          <BuildingName>Building {b}</BuildingName>
          <StreetName>{street}</StreetName>
          <Unit/>
          <Floor>{floor}</Floor>
          <PostOfficeBox/>
          <CityName>{city}</CityName>
          <CountrySubDivisionCode>R{region}</CountrySubDivisionCode>
          <CountryCode listID="Countries">{country}</CountryCode>
          <PostalCode>{postal}</PostalCode>
          <Preference>
            <Indicator>true</Indicator>
          </Preference>
        </Address>
      </Location>
      <Communication preferredIndicator="true" sequence="1">
        <ChannelCode>Phone</ChannelCode>
        <UseCode>Office</UseCode>
        <DialNumber>+49 30 {phone}</DialNumber>
      </Communication>
      <Communication sequence="2">
        <ChannelCode>EMail</ChannelCode>
        <UseCode>Office</UseCode>
        <URI>accounts.{number}@customer{number}.example</URI>
      </Communication>
      <Communication sequence="3">
        <ChannelCode>Web Site</ChannelCode>
        <URI>https://www.customer{number}.example/</URI>
      </Communication>
      <UserArea>
        <Property>
          <NameValue name="erp.CreditLimit" type="Amount">{credit}</NameValue>
        </Property>
        <Property>
          <NameValue name="erp.Area" type="String">Area {region}</NameValue>
        </Property>
      </UserArea>
    </CustomerPartyMaster>
  </DataArea>
</SyncCustomerPartyMaster>
"#,
            min = i / 60 % 60,
            sec = i % 60,
            sp = if i.is_multiple_of(3) { "1001" } else { "2002" },
            b = number % 9 + 1,
            region = number % 16,
            floor = house % 7,
            credit = (number % 50 + 1) * 1000,
        )
        .into_bytes()
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        let kind = self.pick_kind();
        let bytes = if kind == Kind::Duplicate {
            let at = self.rng.below(self.recent.len() as u64) as usize;
            self.recent[at].clone()
        } else {
            self.document(kind)
        };
        if kind != Kind::Duplicate && kind != Kind::Invalid {
            if self.recent.len() < 512 {
                self.recent.push(bytes.clone());
            } else {
                let at = self.rng.below(512) as usize;
                self.recent[at] = bytes.clone();
            }
        }
        let index = self.index;
        self.index += 1;
        Some(Generated { index, kind, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_documents_and_realistic_size() {
        let a: Vec<_> = Generator::new(7, Mix::REALISTIC).take(200).collect();
        let b: Vec<_> = Generator::new(7, Mix::REALISTIC).take(200).collect();
        assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
        let avg = a.iter().map(|g| g.bytes.len()).sum::<usize>() / a.len();
        assert!((3000..4000).contains(&avg), "average size {avg}");
        for kind in [
            Kind::New,
            Kind::Update,
            Kind::Duplicate,
            Kind::Stale,
            Kind::Invalid,
        ] {
            assert!(
                a.iter().any(|g| g.kind == kind),
                "{kind:?} missing from the mix"
            );
        }
    }
}
