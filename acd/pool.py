"""Which operator takes the next call, sans I/O.

The foundation's rule is the classic one: among operators who are free and hold the queue's
skill (and speak the caller's language when the queue asks for it), take the one idle longest.
Skill levels, wrap-up, pauses and callbacks come with the ACD issue; they extend this pool.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AgentState:
    id: str
    endpoint: str
    skills: frozenset[str]
    languages: frozenset[str]
    busy: bool = False
    idle_since: float = 0.0


@dataclass
class AgentPool:
    agents: dict[str, AgentState] = field(default_factory=dict)

    @classmethod
    def from_site(cls, site) -> "AgentPool":
        return cls({a.id: AgentState(a.id, a.endpoint, frozenset(a.skills), frozenset(a.languages))
                    for a in site.agents})

    def candidates(self, skills, language: str | None = None, exclude: set[str] = frozenset()) -> list[AgentState]:
        """Free operators holding every one of ``skills`` (and ``language``), longest idle first."""
        skills = frozenset(skills)
        free = [a for a in self.agents.values()
                if not a.busy and skills <= a.skills and a.id not in exclude
                and (language is None or language in a.languages)]
        return sorted(free, key=lambda a: (a.idle_since, a.id))

    def claim(self, agent_id: str) -> None:
        a = self.agents[agent_id]
        if a.busy:
            raise ValueError(f"{agent_id} is already on a call")
        a.busy = True

    def release(self, agent_id: str, now: float) -> None:
        a = self.agents[agent_id]
        a.busy = False
        a.idle_since = now
