//! Cross-signing: re-issuing another CA's certificate under our root.
//!
//! rcgen has no "re-issue this CA certificate under another issuer" API, so
//! the parameters are rebuilt from the certificate's DER (x509-parser): same
//! subject (attribute by attribute, keeping each string type so the encoded
//! name is byte-identical), same public key, same SubjectKeyId, same SANs and
//! CA constraints; new serial, new validity, our root as issuer and AKID.

use crate::ProviderError;
use meshca_core::x509::{key_id, subject_key_id};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

fn invalid(msg: impl Into<String>) -> ProviderError {
    ProviderError::InvalidInput(msg.into())
}

/// The subject of `name` as rcgen parameters, encoding preserved.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, ProviderError> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        if rdn.iter().count() != 1 {
            return Err(invalid(
                "cannot cross-sign a certificate with a multi-valued RDN",
            ));
        }
        for attr in rdn.iter() {
            let oid: Vec<u64> = attr
                .attr_type()
                .iter()
                .ok_or_else(|| invalid("subject attribute OID is too large"))?
                .collect();
            let text = attr
                .as_str()
                .map_err(|_| invalid("subject attribute is not a supported string type"))?
                .to_string();
            let value = match attr.attr_value().tag() {
                Tag::PrintableString => DnValue::PrintableString(
                    text.try_into()
                        .map_err(|_| invalid("bad PrintableString"))?,
                ),
                Tag::Ia5String => {
                    DnValue::Ia5String(text.try_into().map_err(|_| invalid("bad IA5String"))?)
                }
                Tag::Utf8String => DnValue::Utf8String(text),
                _ => return Err(invalid("subject attribute has an unsupported string type")),
            };
            dn.push(DnType::from_oid(&oid), value);
        }
    }
    Ok(dn)
}

fn subject_alt_names(cert: &X509Certificate<'_>) -> Result<Vec<SanType>, ProviderError> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?
    else {
        return Ok(vec![]);
    };
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => Ok(SanType::URI(
                u.to_string()
                    .try_into()
                    .map_err(|_| invalid("bad URI SAN"))?,
            )),
            GeneralName::DNSName(d) => Ok(SanType::DnsName(
                d.to_string()
                    .try_into()
                    .map_err(|_| invalid("bad DNS SAN"))?,
            )),
            _ => Err(invalid("cannot cross-sign a CA with this SAN type")),
        })
        .collect()
}

fn subtree(base: &GeneralName<'_>) -> Result<rcgen::GeneralSubtree, ProviderError> {
    Ok(match base {
        GeneralName::DNSName(d) => rcgen::GeneralSubtree::DnsName(d.to_string()),
        GeneralName::RFC822Name(e) => rcgen::GeneralSubtree::Rfc822Name(e.to_string()),
        GeneralName::DirectoryName(n) => {
            rcgen::GeneralSubtree::DirectoryName(distinguished_name(n)?)
        }
        GeneralName::IPAddress(b) => match b.len() {
            8 => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4(
                b[..4]
                    .try_into()
                    .map_err(|_| invalid("bad IP constraint"))?,
                b[4..]
                    .try_into()
                    .map_err(|_| invalid("bad IP constraint"))?,
            )),
            32 => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6(
                b[..16]
                    .try_into()
                    .map_err(|_| invalid("bad IP constraint"))?,
                b[16..]
                    .try_into()
                    .map_err(|_| invalid("bad IP constraint"))?,
            )),
            _ => return Err(invalid("bad IP name constraint")),
        },
        _ => {
            return Err(invalid(
                "cannot cross-sign a CA with this kind of name constraint",
            ))
        }
    })
}

/// The certificate's name constraints, so that a cross-signed copy is no
/// less constrained than the original: a proxy that trusts only the old
/// root must not see the new CA as unconstrained.
fn name_constraints(
    cert: &X509Certificate<'_>,
) -> Result<Option<rcgen::NameConstraints>, ProviderError> {
    let Some(nc) = cert
        .name_constraints()
        .map_err(|e| invalid(e.to_string()))?
    else {
        return Ok(None);
    };
    let convert = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
        subtrees
            .iter()
            .flatten()
            .map(|s| subtree(&s.base))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Some(rcgen::NameConstraints {
        permitted_subtrees: convert(&nc.value.permitted_subtrees)?,
        excluded_subtrees: convert(&nc.value.excluded_subtrees)?,
    }))
}

fn key_usages(cert: &X509Certificate<'_>) -> Result<Vec<KeyUsagePurpose>, ProviderError> {
    let ku = cert
        .key_usage()
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("CA certificate has no key usage"))?
        .value;
    let mut out = vec![];
    for (set, purpose) in [
        (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
        (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
        (ku.crl_sign(), KeyUsagePurpose::CrlSign),
    ] {
        if set {
            out.push(purpose);
        }
    }
    Ok(out)
}

/// Parameters and public key for re-issuing `cert_der` with a new serial and
/// validity. The caller signs them with its own root.
pub fn cross_sign_params(
    cert_der: &[u8],
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(CertificateParams, rcgen::SubjectPublicKeyInfo), ProviderError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| invalid(e.to_string()))?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .filter(|bc| bc.value.ca)
        .ok_or_else(|| invalid("only CA certificates can be cross-signed"))?;
    let spki = cert.public_key().raw;
    let skid = subject_key_id(&cert).unwrap_or_else(|| key_id(spki));
    let mut p = CertificateParams::default();
    p.distinguished_name = distinguished_name(cert.subject())?;
    p.subject_alt_names = subject_alt_names(&cert)?;
    p.is_ca = IsCa::Ca(match bc.value.path_len_constraint {
        Some(n) => BasicConstraints::Constrained(
            u8::try_from(n).map_err(|_| invalid("path length too large"))?,
        ),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = key_usages(&cert)?;
    p.name_constraints = name_constraints(&cert)?;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.not_before = not_before;
    p.not_after = not_after;
    p.key_identifier_method = KeyIdMethod::PreSpecified(skid);
    p.use_authority_key_identifier_extension = true;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| invalid(format!("unsupported public key: {e}")))?;
    Ok((p, public_key))
}
