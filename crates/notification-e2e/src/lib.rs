//! Notification's E2E environment and suite (not migrated yet).
//!
//! It will own Notification's recipe: its controller image and DataStorage's,
//! a `notification-e2e` cluster with host ports 30186→9186 (metrics) and
//! 30090→30090 (DataStorage) and a host folder mounted at
//! `/tmp/e2e-notifications` (the file delivery channel), the
//! NotificationRequest CRD, RBAC, ConfigMap, NodePort Service and the
//! controller Deployment (an init container fixing the delivery folder's
//! permissions). Unlike the original, DataStorage's build will overlap the
//! cluster's creation. Its 21 specs go in `tests/e2e.rs`. Until then, nothing
//! here.
