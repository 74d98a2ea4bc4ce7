//! Certificates made per run (rcgen) for a service the API server calls over
//! HTTPS, such as an admission webhook: a CA and a serving certificate for
//! `<service>.<namespace>.svc`. They go into a `kubernetes.io/tls` Secret
//! (with `ca.crt`) and into the run folder (files 0600); the CA becomes the
//! `caBundle` of the webhook configurations
//! ([`crate::stack::manifests::Manifests::ca_bundle`]). Never committed.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::api::DynamicObject;

use super::{labels, object};

/// A CA and the serving certificate it signed.
#[derive(Clone)]
pub struct ServingCert {
    /// The DNS names the certificate is for.
    pub dns_names: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("ServingCert")
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// A new CA and a certificate for `service`, `service.namespace`,
    /// `service.namespace.svc` and `service.namespace.svc.cluster.local`.
    pub fn for_service(service: &str, namespace: &str) -> Result<ServingCert, rcgen::Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{service}.{namespace} e2e CA"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let dns_names = vec![
            service.to_string(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        let mut serving = CertificateParams::new(dns_names.clone())?;
        serving
            .distinguished_name
            .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
        let key = KeyPair::generate()?;
        let cert = serving.signed_by(&key, &ca)?;
        Ok(ServingCert {
            dns_names,
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The SHA-256 of the serving certificate (hex): as a pod-template
    /// annotation it rolls the pods that mount a Secret holding a new one,
    /// since a process reads its certificate once, at start.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(self.cert_pem.as_bytes()))
    }

    /// The `kubernetes.io/tls` Secret `name` with `tls.crt`, `tls.key` and
    /// `ca.crt`.
    pub fn secret(&self, namespace: &str, name: &str) -> DynamicObject {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        object(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
            "data": {
                "tls.crt": b64(&self.cert_pem),
                "tls.key": b64(&self.key_pem),
                "ca.crt": b64(&self.ca_pem),
            }
        }))
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created 0700),
    /// each 0600; returns the folder.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        for (name, text) in [
            ("ca.crt", &self.ca_pem),
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
        ] {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))?;
            file.write_all(text.as_bytes())?;
        }
        Ok(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_certificate_names_the_service_and_lands_in_a_secret_and_private_files() {
        let cert = ServingCert::for_service("hook", "ns1").unwrap();
        assert!(cert.dns_names.contains(&"hook.ns1.svc".to_string()));
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        let secret = serde_json::to_value(cert.secret("ns1", "hook-tls")).unwrap();
        assert_eq!(secret["type"], "kubernetes.io/tls");
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["tls.key"].as_str().unwrap())
            .unwrap();
        assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        let written = cert.write_to(&dir.path().join("tls")).unwrap();
        for name in ["ca.crt", "tls.crt", "tls.key"] {
            let mode = std::fs::metadata(written.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // A new run, a new CA.
        let other = ServingCert::for_service("hook", "ns1").unwrap();
        assert_ne!(other.ca_pem, cert.ca_pem);
    }
}
