//! AuthWebhook's E2E environment and suite (not migrated yet).
//!
//! It will own AuthWebhook's recipe: the webhook and DataStorage images, a
//! single-node `authwebhook-e2e` cluster (host ports 30442→25442 PostgreSQL,
//! 30386→26386 Redis, 30099→28099 DataStorage, 30443→30443 webhook), the shared
//! stack, a self-signed certificate for `authwebhook.<ns>.svc` in a Secret, the
//! CRDs, the webhook Deployment with HTTPS `/healthz` and `/readyz`, and the
//! Mutating and Validating webhook configurations with `failurePolicy: Fail`
//! and their caBundle set when they are applied (the original patched it before
//! they existed). Its specs go in `tests/e2e.rs`. Until then, nothing here.
