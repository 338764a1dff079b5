"""Property-based tests of the ACD engine: random operation sequences on a rising clock.

The checks use their own reading of the rules (levels, overflow stages by wait time), not the
engine's, so a wrong index or a stale heap entry shows up as a broken invariant.
"""
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from acd.engine import ACD, AVAILABLE, ON_CALL, RINGING, ACDError, AgentSpec, Enqueued, QueueSpec, lang_skill

QUEUES = {
    # widen, open to supervisors, fall back, with languages
    "g": QueueSpec("g", "general", ("ja", "vi"), min_level=4, widen_after=30, open_after=60, overflow_skill="sup",
                   fallback_after=120, fallback="callback", max_wait=200, wrapup=5, pause_after_misses=2),
    # record-gated wrap-up, most skilled, short queue
    "t": QueueSpec("t", "tax", ("ja",), strategy="most-skilled", min_level=2, wrapup_until_record=True,
                   max_wait=150, max_length=4, pause_after_misses=3),
    # round robin, no overflow
    "r": QueueSpec("r", "general", strategy="round-robin", max_wait=100, wrapup=0, pause_after_misses=0),
}
AGENT_IDS = ("a1", "a2", "a3", "a4", "a5", "a6")
LANGS = ("ja", "vi", "en")
SKILLS = ("general", "tax", "sup", "extra")

# most agents hold general; some tax, sup or extra too, at any level
levels = st.builds(lambda g, more: {**({"general": g} if g else {}), **more},
                   st.sampled_from([0, 1, 3, 5, 8, 10]),
                   st.dictionaries(st.sampled_from(SKILLS[1:]), st.integers(1, 10), max_size=2))
languages = st.sets(st.sampled_from(LANGS), min_size=1, max_size=2).map(lambda s: s | {"ja"} if "vi" not in s else s)
dt = st.sampled_from([0, 0, 0, 0.5, 1, 1, 2, 3, 5, 8, 13, 31])


def base_requirements(queue: QueueSpec, language, extra) -> dict:
    req = {queue.skill: queue.min_level}
    if language in queue.languages:
        req[lang_skill(language)] = 1
    for s in extra:
        req[s] = max(req.get(s, 0), 1)
    return req


def meets(skills: dict, req: dict) -> bool:
    return all(skills.get(s, 0) >= lvl for s, lvl in req.items())


class ACDMachine(RuleBasedStateMachine):
    @initialize(specs=st.lists(st.tuples(levels, languages), min_size=len(AGENT_IDS), max_size=len(AGENT_IDS)),
                logged_in=st.sets(st.sampled_from(AGENT_IDS)))
    def setup(self, specs, logged_in):
        self.skills = {}
        for aid, (lv, langs) in zip(AGENT_IDS, specs):
            sk = dict(lv)
            sk.update({lang_skill(x): 5 for x in langs})
            self.skills[aid] = sk
        self.acd = ACD(QUEUES, {aid: AgentSpec(aid, f"PJSIP/{aid}", sk) for aid, sk in self.skills.items()})
        self.now = 0.0
        self.n = 0
        self.calls = {}          # call id -> dict(queue, req, priority, seq, enqueued)
        self.ringing = {}        # call id -> agent
        self.connected = {}      # call id -> agent
        self.endings = {}        # call id -> [CONNECT | ABANDON | EXITWITHTIMEOUT]
        self.entered = set()     # call ids with an ENTERQUEUE event
        for aid in sorted(logged_in):
            self.acd.login(aid, self.now)

    # -------------------------------------------------------------- helpers

    def tick_clock(self, step):
        self.now += step

    def stage_ok(self, aid, cid) -> bool:
        """The rule as written: base levels, or any level after widen_after, or the overflow
        skill (other requirements at level 1) after open_after."""
        c = self.calls[cid]
        q = QUEUES[c["queue"]]
        waited = self.now
        sk = self.skills[aid]
        if meets(sk, c["req"]):
            return True
        if q.widen_after is not None and c["enqueued"] + q.widen_after <= waited and \
                meets(sk, {s: 1 for s in c["req"]}):
            return True
        if q.open_after is not None and c["enqueued"] + q.open_after <= waited:
            alt = {s: 1 for s in c["req"] if s != q.skill}
            alt[q.overflow_skill] = 1
            return meets(sk, alt)
        return False

    def collect(self):
        for e in self.acd.drain_events():
            if e.event == "ENTERQUEUE":
                self.entered.add(e.call_id)
            if e.event in ("CONNECT", "ABANDON", "EXITWITHTIMEOUT"):
                self.endings.setdefault(e.call_id, []).append(e.event)

    # -------------------------------------------------------------- agents

    @rule(aid=st.sampled_from(AGENT_IDS), step=dt)
    def login(self, aid, step):
        self.tick_clock(step)
        self.acd.login(aid, self.now)

    @rule(aid=st.sampled_from(AGENT_IDS), step=dt)
    def logout(self, aid, step):
        self.tick_clock(step)
        self.acd.logout(aid, self.now)

    @rule(aid=st.sampled_from(AGENT_IDS), reason=st.sampled_from(["lunch", "training"]), step=dt)
    def pause(self, aid, reason, step):
        self.tick_clock(step)
        try:
            self.acd.pause(aid, self.now, reason)
        except ACDError:
            assert self.acd.agent(aid).state == "logged_out"

    @rule(aid=st.sampled_from(AGENT_IDS), step=dt)
    def unpause(self, aid, step):
        self.tick_clock(step)
        self.acd.unpause(aid, self.now)

    @rule(aid=st.sampled_from(AGENT_IDS), step=dt)
    def record_saved(self, aid, step):
        self.tick_clock(step)
        self.acd.record_saved(aid, self.now)

    # -------------------------------------------------------------- calls

    @rule(queue=st.sampled_from(sorted(QUEUES)), language=st.sampled_from(LANGS + (None,)),
          priority=st.sampled_from([0, 0, 0, 10]), extra=st.sampled_from([(), (), ("extra",)]), step=dt)
    def enqueue(self, queue, language, priority, extra, step):
        self.tick_clock(step)
        self.n += 1
        cid = f"c{self.n}"
        before = self.acd.queue_length(queue)
        res = self.acd.enqueue(cid, queue, language, priority, self.now, extra_skills=extra)
        if isinstance(res, Enqueued):
            self.calls[cid] = dict(queue=queue, req=base_requirements(QUEUES[queue], language, extra),
                                   priority=priority, seq=self.n, enqueued=self.now)
            assert res.position >= 1 and res.estimated_wait >= 0
        else:
            assert res.reason == "full" and before >= QUEUES[queue].max_length

    @rule(step=dt)
    def offers(self, step):
        self.tick_clock(step)
        offers = self.acd.offers(self.now)
        busy = set(self.ringing.values()) | set(self.connected.values())
        for o in offers:
            assert o.call_id in self.calls and o.call_id not in self.ringing and o.call_id not in self.connected
            assert o.agent_id not in busy, f"{o.agent_id} offered a second call"
            busy.add(o.agent_id)
            assert self.stage_ok(o.agent_id, o.call_id), f"{o} before the overflow rule allows it"
            self.ringing[o.call_id] = o.agent_id
        views = {v.id: v for v in self.acd.agents()}
        waiting = [v for v in self.acd.calls() if v.state == "waiting"]
        free = [aid for aid, v in views.items() if v.state == AVAILABLE]
        for c in waiting:
            for aid in free:
                assert not self.stage_ok(aid, c.id), f"{c.id} waits while {aid} is free and qualified"
        # arrival order: nobody better placed in line, whom the offered agent could take, waits
        for o in offers:
            mine = self.calls[o.call_id]
            for c in waiting:
                other = self.calls[c.id]
                ahead = (-other["priority"], other["seq"]) < (-mine["priority"], mine["seq"])
                assert not (ahead and self.stage_ok(o.agent_id, c.id)), f"{c.id} passed over for {o.call_id}"
        self.collect()

    @precondition(lambda self: self.ringing)
    @rule(data=st.data(), step=dt)
    def answer(self, data, step):
        self.tick_clock(step)
        cid = data.draw(st.sampled_from(sorted(self.ringing)))
        aid = self.ringing.pop(cid)
        self.acd.answered(cid, aid, self.now)
        self.connected[cid] = aid

    @precondition(lambda self: self.ringing)
    @rule(data=st.data(), step=dt)
    def ring_no_answer(self, data, step):
        self.tick_clock(step)
        cid = data.draw(st.sampled_from(sorted(self.ringing)))
        aid = self.ringing.pop(cid)
        self.acd.ring_no_answer(cid, aid, self.now)

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), by=st.sampled_from(["caller", "agent"]), step=dt)
    def end(self, data, by, step):
        self.tick_clock(step)
        cid = data.draw(st.sampled_from(sorted(self.connected)))
        del self.connected[cid]
        self.acd.ended(cid, self.now, by=by)
        del self.calls[cid]

    @precondition(lambda self: any(c not in self.connected for c in self.calls))
    @rule(data=st.data(), step=dt)
    def abandon(self, data, step):
        self.tick_clock(step)
        cid = data.draw(st.sampled_from(sorted(c for c in self.calls if c not in self.connected)))
        self.acd.abandon(cid, self.now)
        self.ringing.pop(cid, None)
        del self.calls[cid]

    @rule(step=dt)
    def tick(self, step):
        self.tick_clock(step)
        for f in self.acd.tick(self.now):
            assert f.call_id in self.calls and f.call_id not in self.ringing and f.call_id not in self.connected
            assert f.kind in ("callback", "timeout")
            del self.calls[f.call_id]

    # -------------------------------------------------------------- invariants

    @invariant()
    def one_call_per_agent(self):
        if not hasattr(self, "acd"):
            return
        holders = {}
        for v in self.acd.calls():
            if v.agent is not None:
                assert v.agent not in holders, f"{v.agent} holds {holders.get(v.agent)} and {v.id}"
                holders[v.agent] = v.id
                assert self.acd.agent(v.agent).state == (RINGING if v.state == "ringing" else ON_CALL)
        for v in self.acd.agents():
            if v.state in (RINGING, ON_CALL):
                assert holders.get(v.id) == v.call_id

    @invariant()
    def every_call_ends_at_most_once(self):
        if not hasattr(self, "acd"):
            return
        self.collect()
        for cid, ends in self.endings.items():
            assert len(ends) == 1 and cid in self.entered, (cid, ends)

    def teardown(self):
        if not hasattr(self, "acd"):
            return
        # drive every call to its end: answer what rings, then let the rest time out
        for cid, aid in sorted(self.ringing.items()):
            self.acd.answered(cid, aid, self.now)
            self.connected[cid] = aid
        self.ringing.clear()
        self.now += 1000
        for f in self.acd.tick(self.now):
            del self.calls[f.call_id]
        assert set(self.calls) == set(self.connected)
        self.collect()
        # every enqueued call ended exactly once: connected, abandoned, or out with a fallback
        assert set(self.endings) == self.entered
        assert all(len(ends) == 1 for ends in self.endings.values())


ACDMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestACDProperties = ACDMachine.TestCase
