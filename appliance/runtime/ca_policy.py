"""Whether the CA fits the config: created on first start, refused when its name
constraints leave out intercepted hosts, warned about when expiring or too broad."""

from __future__ import annotations

import datetime as dt
import logging

from appliance.config.hostnames import Hostname, too_broad
from appliance.config.model import Config, StartupError
from appliance.config.registries import Registries
from appliance.tls.ca import CertificateAuthority, create_ca, expiry_warning, load_ca

log = logging.getLogger(__name__)


def ca_constraints(config: Config, registries: Registries) -> tuple[Hostname, ...] | None:
    """The DNS subtrees a new CA is constrained to; None: unconstrained (THREAT_MODEL.md)."""
    return registries.permitted_domains if config.tls.name_constraints else None


def ensure_ca(config: Config, registries: Registries, now: dt.datetime) -> CertificateAuthority:
    """Load the CA, creating it on first start; refuse one that cannot sign our hosts."""
    ca = load_ca(config.state_dir)
    if ca is None:
        ca = create_ca(
            config.state_dir,
            permitted_domains=ca_constraints(config, registries),
            lifetime=dt.timedelta(days=config.tls.ca_lifetime_days),
            now=now,
        )
    problem = ca_mismatch(registries, ca)
    if problem:
        raise StartupError(problem)
    warning = expiry_warning(ca, now)
    if warning:
        log.warning("ca expiring %s", warning)
    broad = constraints_warning(ca)
    if broad:
        log.warning("ca constraints-too-broad %s", broad)
    return ca


def constraints_warning(ca: CertificateAuthority) -> str | None:
    """A CA made before public suffixes were refused may be constrained to one."""
    broad = [d for d in ca.permitted_domains() or () if too_broad(d)]
    if not broad:
        return None
    return (
        f"domains={','.join(broad)}: the CA may sign for names anyone can register under "
        "them; set tls.permitted_domains (or leave it unset) and run `regcache ca rotate`"
    )


def ca_mismatch(registries: Registries, ca: CertificateAuthority) -> str | None:
    """Why the CA cannot serve the configured hosts (clients would reject it), or None."""
    permitted = ca.permitted_domains()
    if permitted is None:
        return None
    outside = registries.hosts_outside(permitted)
    if not outside:
        return None
    return (
        f"intercepted hosts {', '.join(outside)} lie outside the CA's name constraints "
        f"({', '.join(permitted)}); clients would reject their certificates. Add their "
        "domain to tls.permitted_domains and run `regcache ca rotate`, or remove the hosts."
    )
