"""What every compiler pass reads: the checked spec, where its keys came from, and the target."""

from __future__ import annotations

from pathlib import Path

import attrs

from dbspec.diagnostics import Diagnostic, Severity
from dbspec.plan.model import TargetEnv
from dbspec.spec.load import RawSpec
from dbspec.spec.model import Spec
from dbspec.spec.paths import KeyPath, dotted


@attrs.define
class Context:
    spec: Spec
    raw: RawSpec
    env: TargetEnv
    diagnostics: list[Diagnostic] = attrs.field(factory=list)

    @property
    def spec_dir(self) -> Path:
        return self.raw.path.parent

    def resolve(self, path: str) -> Path:
        """Spec-relative paths resolve against the spec's folder; `~` expands."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.spec_dir / p).resolve()

    @property
    def cache_dir(self) -> Path:
        return self.resolve(self.spec.cache.dir)

    def report(
        self,
        code: str,
        severity: Severity,
        message: str,
        path: KeyPath,
        help: str = "",
        notes: tuple[str, ...] = (),
    ) -> None:
        span = self.raw.value_span(path) if self.raw.given(path) else self.raw.key_span(path)
        self.diagnostics.append(
            Diagnostic(
                code=code,
                severity=severity,
                message=message,
                path=dotted(path),
                span=span,
                help=help,
                notes=notes,
            )
        )

    def adopt(self, diagnostic: Diagnostic, path: KeyPath) -> None:
        """Attach the span of `path` to a diagnostic made without one (e.g. by the image scanner)."""
        span = self.raw.value_span(path) if self.raw.given(path) else self.raw.key_span(path)
        self.diagnostics.append(attrs.evolve(diagnostic, span=diagnostic.span or span))
