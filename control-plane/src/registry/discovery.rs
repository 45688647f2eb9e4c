//! discovery.k8s.io/v1 EndpointSlices, validated as kube-apiserver does
//! (pkg/apis/discovery/validation) and printed as kubectl shows them.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::table::{self, Column, AGE, NAME};
use super::validation::{check_qualified_name, is_dns1123_label, quote, ErrorType, Errors};
use super::{typed, Base, Kind, ResourceType};

pub(super) fn register(out: &mut Vec<ResourceType>) {
    out.push(ResourceType {
        group: "discovery.k8s.io",
        ..Base::core(
            "EndpointSlice",
            "endpointslices",
            "endpointslice",
            typed::<EndpointSlice>(),
        )
    });
}

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 100;

const COLUMNS: &[Column] = &[
    NAME,
    Column::new("AddressType", "string", "The IP protocol for this slice"),
    Column::new("Ports", "string", "The ports this slice exposes"),
    Column::new("Endpoints", "string", "The endpoints in this slice"),
    AGE,
];

/// `a,b,c + N more...`, or `<unset>` when empty, as kubectl prints a slice's lists.
fn first_three(items: Vec<String>) -> String {
    match items.len() {
        0 => "<unset>".into(),
        n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
        _ => items.join(","),
    }
}

fn too_many(errs: &mut Errors, field: String, n: usize, max: usize) {
    errs.push(field, ErrorType::TooMany(n, max), "");
}

impl Kind for EndpointSlice {
    fn validate(&self, errs: &mut Errors) {
        let kind = self.address_type.as_str();
        if kind.is_empty() {
            errs.required("addressType");
        } else if !ADDRESS_TYPES.contains(&kind) {
            errs.not_supported("addressType", kind, ADDRESS_TYPES);
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            too_many(
                errs,
                "endpoints".into(),
                self.endpoints.len(),
                MAX_ENDPOINTS,
            );
        } else {
            for (i, ep) in self.endpoints.iter().enumerate() {
                let path = format!("endpoints[{i}].addresses");
                if ep.addresses.is_empty() {
                    errs.required_msg(path.clone(), "must contain at least 1 address");
                } else if ep.addresses.len() > MAX_ADDRESSES {
                    too_many(errs, path.clone(), ep.addresses.len(), MAX_ADDRESSES);
                }
                for (j, a) in ep.addresses.iter().enumerate() {
                    let field = format!("{path}[{j}]");
                    match kind {
                        "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                            errs.invalid_str(field, a, "must be a valid IPv4 address")
                        }
                        "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                            errs.invalid_str(field, a, "must be a valid IPv6 address")
                        }
                        "IPv4" | "IPv6" => {
                            let ip: std::net::IpAddr = a.parse().expect("checked above");
                            super::validation::non_special_ip(ip, a, &field, errs);
                        }
                        _ => {}
                    }
                }
                if let Some(h) = ep.hostname.as_deref().filter(|h| !is_dns1123_label(h)) {
                    errs.invalid_str(
                        format!("endpoints[{i}].hostname"),
                        h,
                        super::validation::DNS1123_LABEL_MSG,
                    );
                }
            }
        }
        let ports = self.ports.as_deref().unwrap_or_default();
        if ports.len() > MAX_PORTS {
            too_many(errs, "ports".into(), ports.len(), MAX_PORTS);
            return;
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let name = p.name.as_deref().unwrap_or_default();
            if !name.is_empty() && !is_dns1123_label(name) {
                errs.invalid_str(
                    format!("ports[{i}].name"),
                    name,
                    super::validation::DNS1123_LABEL_MSG,
                );
            }
            if !names.insert(name) {
                errs.push(
                    format!("ports[{i}].name"),
                    ErrorType::Duplicate(quote(name)),
                    "",
                );
            }
            match p.protocol.as_deref() {
                None => errs.required(format!("ports[{i}].protocol")),
                Some(proto) if !PROTOCOLS.contains(&proto) => {
                    errs.not_supported(format!("ports[{i}].protocol"), proto, PROTOCOLS)
                }
                Some(_) => {}
            }
            if let Some(msg) = p.app_protocol.as_deref().and_then(check_qualified_name) {
                errs.invalid_str(
                    format!("ports[{i}].appProtocol"),
                    p.app_protocol.as_deref().unwrap_or_default(),
                    msg,
                );
            }
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.address_type != old.address_type {
            errs.invalid_str("addressType", &self.address_type, "field is immutable");
        }
    }

    fn columns() -> &'static [Column] {
        COLUMNS
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let ports = self
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.map_or("<unset>".to_string(), |n| n.to_string()))
            .collect();
        let addresses = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        vec![
            table::name(&self.metadata),
            self.address_type.clone().into(),
            first_three(ports).into(),
            first_three(addresses).into(),
            table::age(self.meta_created(), now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn errors(s: &EndpointSlice) -> Vec<String> {
        let mut errs = Errors::default();
        s.validate(&mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn slices_are_validated_as_kube_does() {
        let good = slice(serde_json::json!({
            "metadata": {"name": "web-abc"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }));
        assert_eq!(errors(&good), Vec::<String>::new());
        let bad = slice(serde_json::json!({
            "metadata": {"name": "web-abc"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": []}, {"addresses": ["fd00::1", "127.0.0.1"]}],
            "ports": [{"name": "Http", "port": 1, "protocol": "TCP"}, {"name": "Http", "port": 2, "protocol": "ICMP"}],
        }));
        let errs = errors(&bad);
        for want in [
            "endpoints[0].addresses: Required value: must contain at least 1 address",
            "endpoints[1].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
            "endpoints[1].addresses[1]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            "ports[1].name: Duplicate value: \"Http\"",
            "ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ] {
            assert!(errs.iter().any(|e| e == want), "{want} not in {errs:#?}");
        }
        assert!(errs
            .iter()
            .any(|e| e.starts_with("ports[0].name: Invalid value: \"Http\"")));
        let mut errs = Errors::default();
        let v6 = slice(
            serde_json::json!({"metadata": {"name": "x"}, "addressType": "IPv6", "endpoints": []}),
        );
        v6.validate_update(&good, &mut errs);
        assert_eq!(
            errs.0[0].to_string(),
            "addressType: Invalid value: \"IPv6\": field is immutable"
        );
    }

    #[test]
    fn rows_show_three_of_each() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc"},
            "addressType": "IPv4",
            "endpoints": (1..=5).map(|i| serde_json::json!({"addresses": [format!("10.0.0.{i}")]})).collect::<Vec<_>>(),
            "ports": [{"port": 80, "protocol": "TCP"}],
        }));
        let cells = s.cells(jiff::Timestamp::now());
        assert_eq!(cells[2], "80");
        assert_eq!(cells[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...");
        let empty = slice(
            serde_json::json!({"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": []}),
        );
        assert_eq!(empty.cells(jiff::Timestamp::now())[3], "<unset>");
    }
}
