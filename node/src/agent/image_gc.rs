//! Image garbage collection, as the kubelet's image GC manager does it: when the disk
//! holding the image store is used past the high threshold (`--image-gc-high-threshold`,
//! 85%), images no pod on the node uses are deleted, least recently used first and none
//! first seen less than `--minimum-image-ttl-duration` (2m) ago, until usage is down to the
//! low threshold (80%). Checked every `--image-gc-period` (5m), and every 10 s while the
//! node has DiskPressure (the eviction manager's reclaim). Not enough to delete is a
//! Warning Event `ImageGCFailed` on the node, in the kubelet's words.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use super::{node_info, Ctx};

/// How often a node under DiskPressure tries to reclaim (the eviction manager's period).
const PRESSURE_CHECK: Duration = Duration::from_secs(10);

/// The kubelet's image GC settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Percent of the disk used past which images are collected (100: never).
    pub high_percent: u8,
    /// Percent of the disk a collection brings usage down to.
    pub low_percent: u8,
    /// Images first seen more recently than this are kept.
    pub min_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// When the collector first saw an image, and last saw it in use.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Seen {
    first: Instant,
    last_used: Instant,
}

/// A stored image, as the collector weighs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub digest: String,
    pub size: u64,
}

/// The images to delete to free `wanted` bytes: unused ones old enough, least recently
/// used (then first seen) first; and the bytes they free. `seen` learns of new images and
/// of those in use now.
fn plan(
    stored: &[Stored],
    in_use: &HashSet<String>,
    seen: &mut HashMap<String, Seen>,
    now: Instant,
    min_age: Duration,
    wanted: u64,
) -> (Vec<String>, u64) {
    seen.retain(|d, _| stored.iter().any(|s| s.digest == *d));
    for s in stored {
        let e = seen.entry(s.digest.clone()).or_insert(Seen {
            first: now,
            last_used: now,
        });
        if in_use.contains(&s.digest) {
            e.last_used = now;
        }
    }
    let mut candidates: Vec<(&Stored, Seen)> = stored
        .iter()
        .filter(|s| !in_use.contains(&s.digest))
        .map(|s| (s, seen[&s.digest]))
        .filter(|(_, t)| now.duration_since(t.first) >= min_age)
        .collect();
    candidates.sort_by_key(|(s, t)| (t.last_used, t.first, s.digest.clone()));
    let mut freed = 0;
    let mut chosen = Vec::new();
    for (s, _) in candidates {
        if freed >= wanted {
            break;
        }
        freed += s.size;
        chosen.push(s.digest.clone());
    }
    (chosen, freed)
}

/// Bytes to free so that `(total, available)` is back at `low_percent` used (kube's
/// `capacity*(100-low)/100 - available`); 0 while usage is under `high_percent`.
fn to_free((total, available): (u64, u64), policy: &Policy) -> u64 {
    if total == 0 || policy.high_percent >= 100 {
        return 0;
    }
    let used_percent = (total - available.min(total)) * 100 / total;
    if used_percent < u64::from(policy.high_percent) {
        return 0;
    }
    (total / 100 * u64::from(100 - policy.low_percent.min(100))).saturating_sub(available)
}

/// Runs the collector for this node until the agent stops.
pub(super) async fn run(ctx: Arc<Ctx>, node_name: String, policy: Policy) {
    let mut seen = HashMap::new();
    let mut next = Instant::now() + policy.period;
    loop {
        tokio::time::sleep(PRESSURE_CHECK.min(policy.period)).await;
        let figures = node_info::Figures::read(ctx.images.dir());
        if Instant::now() < next && !figures.pressure().disk {
            continue;
        }
        next = Instant::now() + policy.period;
        let wanted = to_free((figures.disk_total, figures.disk_available), &policy);
        if wanted == 0 {
            continue;
        }
        if let Err(e) = collect(&ctx, &node_name, &policy, &mut seen, wanted).await {
            tracing::warn!(error = %e, "image garbage collection failed");
        }
    }
}

/// One collection, freeing `wanted` bytes if it can.
async fn collect(
    ctx: &Arc<Ctx>,
    node_name: &str,
    policy: &Policy,
    seen: &mut HashMap<String, Seen>,
    wanted: u64,
) -> Result<(), kube::Error> {
    // Images of every pod bound here are in use (their containers exist or will).
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let bound = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await?;
    let in_use: HashSet<String> = bound
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter_map(|c| c.image.as_deref())
        .filter_map(|image| ctx.images.resolve(image))
        .map(|i| i.digest)
        .collect();
    let stored: Vec<Stored> = ctx
        .images
        .stored()
        .into_iter()
        .map(|(digest, size)| Stored { digest, size })
        .collect();
    let (chosen, eligible) = plan(
        &stored,
        &in_use,
        seen,
        Instant::now(),
        policy.min_age,
        wanted,
    );
    let owner = ctx.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        for digest in chosen {
            match owner.images.remove(&digest) {
                Ok(()) => {
                    owner.runtimes.wasm.forget(&digest);
                    tracing::info!(%digest, "unused image removed");
                    removed += 1;
                }
                Err(e) => tracing::warn!(%digest, error = %e, "removing an unused image failed"),
            }
        }
        removed
    })
    .await
    .unwrap_or(0);
    tracing::info!(wanted, eligible, removed, "image garbage collection");
    if eligible < wanted {
        ctx.events.node(
            "Warning",
            "ImageGCFailed",
            format!("Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {eligible} bytes eligible to free."),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(d: &str, size: u64) -> Stored {
        Stored {
            digest: d.into(),
            size,
        }
    }

    #[test]
    fn collection_starts_past_the_high_threshold_and_aims_at_the_low_one() {
        let p = Policy::default();
        assert_eq!(to_free((1000, 200), &p), 0, "80% used: under 85%");
        assert_eq!(to_free((1000, 100), &p), 100, "90% used: down to 80%");
        let never = Policy {
            high_percent: 100,
            ..p
        };
        assert_eq!(to_free((1000, 0), &never), 0);
        assert_eq!(to_free((0, 0), &p), 0);
    }

    #[test]
    fn unused_old_images_go_least_recently_used_first() {
        let t0 = Instant::now();
        let min_age = Duration::from_secs(120);
        let mut seen = HashMap::new();
        let all = vec![stored("a", 10), stored("b", 20), stored("c", 30)];
        let used: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        // Everything is new: nothing goes.
        let none: HashSet<String> = HashSet::new();
        assert_eq!(plan(&all, &none, &mut seen, t0, min_age, 100), (vec![], 0));
        assert_eq!(
            plan(
                &all,
                &used,
                &mut seen,
                t0 + Duration::from_secs(10),
                min_age,
                100
            ),
            (vec![], 0)
        );
        // Later: a stays in use, b was last used after c: c, then b.
        let t1 = t0 + Duration::from_secs(300);
        let only_a: HashSet<String> = ["a".to_string()].into();
        assert_eq!(
            plan(&all, &only_a, &mut seen, t1, min_age, 100),
            (vec!["c".to_string(), "b".to_string()], 50)
        );
        // Enough is freed by the first.
        let (chosen, freed) = plan(&all, &only_a, &mut seen, t1, min_age, 5);
        assert_eq!((chosen, freed), (vec!["c".to_string()], 30));
        // A new image is kept until it is old enough.
        let more = vec![stored("a", 10), stored("d", 40)];
        assert_eq!(
            plan(&more, &only_a, &mut seen, t1, min_age, 100),
            (vec![], 0)
        );
        assert!(!seen.contains_key("b"), "images gone are forgotten");
    }
}
