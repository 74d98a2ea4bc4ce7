//! Gateway's E2E environment and suite (not migrated yet).
//!
//! It will own Gateway's recipe: the Gateway and DataStorage images built in
//! parallel, a `gateway-e2e` cluster (one worker; host ports 30080→8080 API,
//! 30090→9090 metrics, 30081→18091 DataStorage; `./coverdata` on both nodes),
//! the RemediationRequest CRD and namespace, PostgreSQL, Redis and the
//! migrations (the original once forgot them), DataStorage, then Gateway's
//! config and policy ConfigMaps, Deployment, NodePort Service, ServiceAccount
//! and ClusterRole; ready when `GET /health` answers on localhost:8080. Its 37
//! specs go in `tests/e2e.rs`. Until then, nothing here.
