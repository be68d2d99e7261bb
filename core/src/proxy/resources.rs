//! The resources a call names (files, cached contents, upload sessions...): the project they
//! live in (the call is pinned to it) and, with tenants isolated, who may reach them.

use super::body::RequestBody;
use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use super::{GatewayProxy, Inbound, tenancy};

impl GatewayProxy {
    /// The resources the call names (path, upload session, body), most specific first; another
    /// tenant's are refused as if they did not exist.
    /// In a cluster, what another instance learnt of them is fetched first.
    pub(super) async fn resources(
        &self,
        ctx: &mut CallState,
        inbound: &Inbound,
        body: &RequestBody,
    ) -> Result<Vec<String>, Failure> {
        let enabled = ctx.runtime.config.auth.tenant_isolation;
        let isolated = tenancy::isolated(ctx.cx(), enabled);
        ctx.owner = tenancy::owner(ctx.cx());
        // In a cluster a pin made anywhere reaches every instance within milliseconds.
        let refs = if isolated || self.shared.pool.has_pins() {
            let scan = match body {
                RequestBody::Buffered(b) if !b.is_empty() => Some(&b[..]),
                _ => None,
            };
            tenancy::resource_refs(&inbound.path, inbound.query.as_deref(), scan)
        } else {
            Vec::new()
        };
        if let Some(c) = &self.shared.cluster
            && !refs.is_empty()
        {
            // Owners are kept under the resource's own name (`files/x` for `files/x:download`).
            let mut names = refs.clone();
            names.extend(refs.iter().filter_map(|r| tenancy::resource_key(r)));
            names.dedup();
            crate::cluster::pins::fetch(c, &self.shared.pool, &names).await;
        }
        if isolated {
            self.own_resources_only(ctx, inbound, &refs)?;
        }
        Ok(refs)
    }

    /// A non-admin caller reaches only resources it created: others are 404, as if they did
    /// not exist, and a listing shows only its own.
    fn own_resources_only(
        &self,
        ctx: &mut CallState,
        inbound: &Inbound,
        refs: &[String],
    ) -> Result<(), Failure> {
        if refs.len() > tenancy::MAX_REFS {
            return Err(Failure::new(
                400,
                ErrorClass::BadRequest,
                format!("a call may name at most {} resources", tenancy::MAX_REFS),
            ));
        }
        for r in refs {
            let key = r
                .strip_prefix("upload:")
                .map(|_| r.clone())
                .or_else(|| tenancy::resource_key(r));
            let Some(key) = key else { continue };
            if self.shared.pool.owner_of(&key).flatten() != ctx.owner {
                return Err(Failure::new(
                    404,
                    ErrorClass::NotFound,
                    format!("{key} was not found"),
                ));
            }
        }
        let listing = tenancy::listed_collection(&ctx.cx().request.method, &inbound.path);
        ctx.own_listing = listing.is_some();
        Ok(())
    }
}
