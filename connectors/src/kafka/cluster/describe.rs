//! `GET /api/v1/cluster`: the cluster's consumer groups as the brokers describe them.

use super::*;

/// The partitions of one topic in a consumer-protocol member assignment (the bytes a
/// group description carries: version, then per topic its name and partitions).
pub(super) fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    let mut b = bytes;
    let mut out = Vec::new();
    let parsed = (|| -> Option<()> {
        take(&mut b, 2)?; // version
        let topics = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
            let name = take(&mut b, len.max(0) as usize)?;
            let n = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
            for _ in 0..n.max(0) {
                let p = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!(topic, "a member assignment that does not parse");
    }
    out.sort_unstable();
    out
}

/// One consumer group of the cluster as the broker describes it: its members (by member
/// id, from the client id Weir gives them) with the partitions of `topic` each owns, and
/// the group's lag on `topic` (records not yet committed).
pub(super) fn describe_group(
    client: &ClientConfig,
    group: &str,
    topic: &str,
) -> Result<serde_json::Value> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .create()
        .map_err(|e| kafka_error("creating a group reader", e))?;
    let list = consumer
        .fetch_group_list(Some(group), METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("describing group '{group}'"), e))?;
    let mut members = Vec::new();
    let mut state = String::new();
    for g in list.groups() {
        state = g.state().to_string();
        for m in g.members() {
            let member = m
                .client_id()
                .strip_prefix(&format!("{group}."))
                .unwrap_or(m.client_id())
                .to_string();
            let partitions = m
                .assignment()
                .map(|a| assigned_partitions(a, topic))
                .unwrap_or_default();
            members.push(serde_json::json!({
                "member": member,
                "host": m.client_host(),
                "partitions": partitions,
            }));
        }
    }
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("reading the metadata of '{topic}'"), e))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("reading group '{group}' offsets"), e))?;
    let mut lag = 0i64;
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), METADATA_TIMEOUT)
            .map_err(|e| kafka_error(&format!("reading the offsets of '{topic}'"), e))?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(serde_json::json!({
        "group": group,
        "topic": topic,
        "state": state,
        "members": members,
        "lag": lag,
    }))
}

/// The whole cluster as Kafka sees it (`GET /api/v1/cluster`): for each source its
/// stage-1 group over its topic, for each view its stage-2 group over its exchange topic,
/// with members, partitions and lag. Blocking: call off the async workers.
pub fn describe(
    client: &ClientConfig,
    group: &str,
    sources: &[(String, String)],
    views: &[String],
) -> Result<serde_json::Value> {
    let mut stage1 = Vec::new();
    for (source, topic) in sources {
        let mut g = describe_group(client, &stage1_group(group, source), topic)?;
        g["source"] = serde_json::json!(source);
        stage1.push(g);
    }
    let mut stage2 = Vec::new();
    for view in views {
        let mut g = describe_group(
            client,
            &stage2_group(group, view),
            &exchange_topic(group, view),
        )?;
        g["view"] = serde_json::json!(view);
        stage2.push(g);
    }
    Ok(serde_json::json!({ "stage1": stage1, "stage2": stage2 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_assignments_are_read_for_one_topic() {
        let mut b = vec![0u8, 1];
        b.extend(2i32.to_be_bytes());
        for (name, parts) in [("in", &[3, 1][..]), ("other", &[0][..])] {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(i32::to_be_bytes(*p));
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(assigned_partitions(&b, "in"), vec![1, 3]);
        assert_eq!(assigned_partitions(&b, "other"), vec![0]);
        assert!(assigned_partitions(&b[..5], "in").is_empty());
    }
}
