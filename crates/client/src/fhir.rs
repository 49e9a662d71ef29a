//! Splitting an HL7 FHIR R4 Bundle into record partitions.
//!
//! Each resource goes to the partition its `resourceType` maps to; each
//! partition becomes one valid FHIR `Bundle` (type `collection`) holding its
//! entries in their original order.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The default resource-type → partition map.
pub const DEFAULT_MAP: &[(&str, &str)] = &[
    ("Patient", "personal"),
    ("RelatedPerson", "personal"),
    ("Condition", "medical"),
    ("Observation", "medical"),
    ("Procedure", "medical"),
    ("AllergyIntolerance", "medical"),
    ("DiagnosticReport", "medical"),
    ("Encounter", "medical"),
    ("Immunization", "medical"),
    ("Coverage", "insurance"),
    ("Claim", "insurance"),
    ("ExplanationOfBenefit", "insurance"),
    ("MedicationRequest", "prescriptions"),
    ("MedicationStatement", "prescriptions"),
    ("Medication", "prescriptions"),
];

/// Where resources of unmapped types go.
pub const FALLBACK_PARTITION: &str = "other";

/// Why a bundle or a partition map was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FhirError {
    /// The text is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The JSON is not a FHIR Bundle.
    #[error("not a FHIR Bundle: {0}")]
    NotABundle(String),
    /// One entry of the bundle is malformed.
    #[error("entry {index}: {why}")]
    BadEntry {
        /// The entry's position in the bundle (from 0).
        index: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The partition map overrides are malformed.
    #[error("invalid partition map: {0}")]
    BadMap(String),
}

/// A resource-type → partition map.
#[derive(Debug, Clone)]
pub struct PartitionMap(BTreeMap<String, String>);

impl Default for PartitionMap {
    fn default() -> Self {
        Self(
            DEFAULT_MAP
                .iter()
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect(),
        )
    }
}

impl PartitionMap {
    /// The default map overridden by a JSON object `{"ResourceType": "partition"}`.
    pub fn with_overrides(json_text: &str) -> Result<Self, FhirError> {
        let v: Value =
            serde_json::from_str(json_text).map_err(|e| FhirError::BadMap(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| FhirError::BadMap("expected a JSON object".into()))?;
        let mut map = Self::default();
        for (ty, p) in obj {
            let p = p
                .as_str()
                .ok_or_else(|| FhirError::BadMap(format!("{ty}: partition must be a string")))?;
            sesphr_identity::validate_partition(p)
                .map_err(|e| FhirError::BadMap(format!("{ty}: {e}")))?;
            map.0.insert(ty.clone(), p.to_owned());
        }
        Ok(map)
    }

    /// The partition resources of `resource_type` go to.
    pub fn partition_of(&self, resource_type: &str) -> &str {
        self.0
            .get(resource_type)
            .map(String::as_str)
            .unwrap_or(FALLBACK_PARTITION)
    }
}

/// Splits a Bundle (JSON text) into one Bundle per partition.
pub fn split_bundle(
    json_text: &str,
    map: &PartitionMap,
) -> Result<BTreeMap<String, Value>, FhirError> {
    let v: Value =
        serde_json::from_str(json_text).map_err(|e| FhirError::NotJson(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| FhirError::NotABundle("the top level is not a JSON object".into()))?;
    match obj.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => {
            return Err(FhirError::NotABundle(format!(
                "resourceType is {other:?}, expected \"Bundle\""
            )));
        }
        None => return Err(FhirError::NotABundle("no resourceType".into())),
    }
    let entries = match obj.get("entry") {
        None => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(FhirError::NotABundle("entry is not an array".into())),
    };
    let mut parts: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let bad = |why: &str| FhirError::BadEntry {
            index,
            why: why.to_owned(),
        };
        let resource = entry
            .get("resource")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no resource object"))?;
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("resource has no resourceType"))?;
        if ty.is_empty() || !ty.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("resourceType is not a FHIR type name"));
        }
        parts
            .entry(map.partition_of(ty).to_owned())
            .or_default()
            .push(entry.clone());
    }
    Ok(parts
        .into_iter()
        .map(|(p, entries)| {
            let mut b = Map::new();
            b.insert("resourceType".into(), json!("Bundle"));
            b.insert("type".into(), json!("collection"));
            b.insert("entry".into(), Value::Array(entries));
            (p, Value::Object(b))
        })
        .collect())
}

/// A small synthetic patient bundle (demo and tests; no real person).
pub fn sample_bundle(patient_id: &str) -> Value {
    let entry = |resource: Value| json!({ "fullUrl": format!("urn:uuid:{}", resource["id"].as_str().unwrap_or("x")), "resource": resource });
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            entry(json!({"resourceType": "Patient", "id": patient_id, "name": [{"family": "Example", "given": ["Alice"]}], "birthDate": "1980-01-01"})),
            entry(json!({"resourceType": "RelatedPerson", "id": "rp1", "patient": {"reference": format!("Patient/{patient_id}")}, "relationship": [{"text": "friend"}]})),
            entry(json!({"resourceType": "Condition", "id": "c1", "code": {"text": "Type 2 diabetes"}, "subject": {"reference": format!("Patient/{patient_id}")}})),
            entry(json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "HbA1c"}, "valueQuantity": {"value": 6.9, "unit": "%"}})),
            entry(json!({"resourceType": "Coverage", "id": "cov1", "status": "active", "payor": [{"display": "Example Health Insurance"}]})),
            entry(json!({"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order", "medicationCodeableConcept": {"text": "Metformin 500 mg"}})),
            entry(json!({"resourceType": "Device", "id": "d1", "deviceName": [{"name": "Glucose meter", "type": "user-friendly-name"}]})),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_splits_by_the_default_map() {
        let text = sample_bundle("alice").to_string();
        let parts = split_bundle(&text, &PartitionMap::default()).unwrap();
        let keys: Vec<&str> = parts.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["insurance", "medical", "other", "personal", "prescriptions"]
        );
        assert_eq!(parts["medical"]["entry"].as_array().unwrap().len(), 2);
        assert_eq!(parts["personal"]["resourceType"], "Bundle");
        assert_eq!(
            parts["other"]["entry"][0]["resource"]["resourceType"],
            "Device"
        );
    }

    #[test]
    fn overrides_apply() {
        let map = PartitionMap::with_overrides(r#"{"Device": "devices", "Observation": "labs"}"#)
            .unwrap();
        let parts = split_bundle(&sample_bundle("a").to_string(), &map).unwrap();
        assert!(parts.contains_key("devices") && parts.contains_key("labs"));
        assert!(PartitionMap::with_overrides(r#"{"Device": "Bad Name"}"#).is_err());
        assert!(PartitionMap::with_overrides("[]").is_err());
    }

    #[test]
    fn non_fhir_is_rejected_clearly() {
        let map = PartitionMap::default();
        assert!(matches!(
            split_bundle("nope", &map),
            Err(FhirError::NotJson(_))
        ));
        assert!(matches!(
            split_bundle("[1]", &map),
            Err(FhirError::NotABundle(_))
        ));
        assert!(matches!(
            split_bundle(r#"{"resourceType": "Patient"}"#, &map),
            Err(FhirError::NotABundle(_))
        ));
        assert!(matches!(
            split_bundle(r#"{"resourceType": "Bundle", "entry": [{"x": 1}]}"#, &map),
            Err(FhirError::BadEntry { index: 0, .. })
        ));
    }
}
