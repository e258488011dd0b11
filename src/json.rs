//! JSON conventions of every file we write: serde_json writes NaN and infinities (a
//! diverged loss, a fit through too few points) as `null`; these read `null` back as NaN
//! rather than rejecting the line.

use serde::{Deserialize, Deserializer};

pub(crate) fn f64_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

pub(crate) fn vec_f64_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}
