//! Clusters. For now: the containerd node containers that stand in for Kind
//! nodes where kind cannot run ([`node`]).

pub mod node;
