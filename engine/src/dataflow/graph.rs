//! The shape of the dataflow: nodes by integer id, each with its inputs (edges in) and its
//! consumers (edges out). Ids only grow and a node's inputs must already exist when it is
//! added, so ascending id order is a topological order: iterating nodes by id visits every
//! node after everything it reads.

use std::collections::BTreeMap;

/// A node's id: its place in the topological order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// One edge into a node: data from `from` arrives on input `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: NodeId,
    pub to: NodeId,
    pub port: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    inputs: Vec<NodeId>,
    consumers: Vec<Edge>,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: BTreeMap<NodeId, Entry>,
    next: u32,
}

/// Why a change to the graph was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    NameTaken(String),
    UnknownInput(NodeId),
    HasConsumers(Vec<NodeId>),
    UnknownNode(NodeId),
}

impl Graph {
    /// Add a node reading `inputs` (in port order); returns its id.
    pub fn add(&mut self, name: &str, inputs: &[NodeId]) -> Result<NodeId, GraphError> {
        if self.id(name).is_some() {
            return Err(GraphError::NameTaken(name.to_string()));
        }
        if let Some(missing) = inputs.iter().find(|i| !self.nodes.contains_key(i)) {
            return Err(GraphError::UnknownInput(*missing));
        }
        let id = NodeId(self.next);
        self.next += 1;
        for (port, from) in inputs.iter().enumerate() {
            if let Some(e) = self.nodes.get_mut(from) {
                e.consumers.push(Edge {
                    from: *from,
                    to: id,
                    port,
                });
                e.consumers.sort();
            }
        }
        self.nodes.insert(
            id,
            Entry {
                name: name.to_string(),
                inputs: inputs.to_vec(),
                consumers: vec![],
            },
        );
        Ok(id)
    }

    /// Remove a node nothing reads.
    pub fn remove(&mut self, id: NodeId) -> Result<(), GraphError> {
        let entry = self.nodes.get(&id).ok_or(GraphError::UnknownNode(id))?;
        if !entry.consumers.is_empty() {
            return Err(GraphError::HasConsumers(
                entry.consumers.iter().map(|e| e.to).collect(),
            ));
        }
        let inputs = entry.inputs.clone();
        self.nodes.remove(&id);
        for i in inputs {
            if let Some(e) = self.nodes.get_mut(&i) {
                e.consumers.retain(|c| c.to != id);
            }
        }
        Ok(())
    }

    pub fn id(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| *id)
    }

    pub fn name(&self, id: NodeId) -> Option<&str> {
        self.nodes.get(&id).map(|e| e.name.as_str())
    }

    /// The nodes `id` reads, in port order.
    pub fn inputs(&self, id: NodeId) -> &[NodeId] {
        self.nodes.get(&id).map_or(&[], |e| e.inputs.as_slice())
    }

    /// The edges out of `id`, in the order data is delivered: by consumer id, then port
    /// (a self-join hears its left side first).
    pub fn consumers(&self, id: NodeId) -> &[Edge] {
        self.nodes.get(&id).map_or(&[], |e| e.consumers.as_slice())
    }

    /// Every node, in topological order.
    pub fn order(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_come_in_topological_order_with_their_edges() {
        let mut g = Graph::default();
        let s = g.add("src", &[]).unwrap();
        let t = g.add("other", &[]).unwrap();
        let v = g.add("v", &[s]).unwrap();
        let j = g.add("j", &[v, s]).unwrap();
        let self_join = g.add("sj", &[t, t]).unwrap();
        assert_eq!(g.order(), vec![s, t, v, j, self_join]);
        assert_eq!(
            g.consumers(s),
            [
                Edge {
                    from: s,
                    to: v,
                    port: 0
                },
                Edge {
                    from: s,
                    to: j,
                    port: 1
                }
            ]
        );
        assert_eq!(
            g.consumers(t),
            [
                Edge {
                    from: t,
                    to: self_join,
                    port: 0
                },
                Edge {
                    from: t,
                    to: self_join,
                    port: 1
                }
            ]
        );
        assert_eq!(g.inputs(j), &[v, s]);
        assert_eq!(g.id("j"), Some(j));
        assert_eq!(g.name(v), Some("v"));
    }

    #[test]
    fn removal_needs_no_consumers_and_ids_are_never_reused() {
        let mut g = Graph::default();
        let s = g.add("src", &[]).unwrap();
        let v = g.add("v", &[s]).unwrap();
        assert_eq!(g.remove(s), Err(GraphError::HasConsumers(vec![v])));
        assert_eq!(g.add("v", &[s]), Err(GraphError::NameTaken("v".into())));
        g.remove(v).unwrap();
        assert!(g.consumers(s).is_empty());
        let again = g.add("v", &[s]).unwrap();
        assert!(again > v, "a new node comes after every existing one");
        assert_eq!(
            g.add("w", &[NodeId(99)]),
            Err(GraphError::UnknownInput(NodeId(99)))
        );
        assert_eq!(g.len(), 2);
    }
}
