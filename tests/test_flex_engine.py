"""FlexEngine end to end without the network: the rig's PV inverter plant model in simulated time feeds the
engine (metering -> history -> baselines -> verification, settlement, availability, prequalification,
accuracy); every record goes through a real Outbox and is validated against schemas/."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from gridedge.core.utc import iso_utc
from gridedge.flex import ActivationWindow, FlexEngine, NominationRejected, parse_flex
from gridedge.core.isp import DAY_NS, NS_PER_S, date_ns
from gridedge.hil.plant import PVInverterPlant, clear_sky_pv
from gridedge.core.model import Detail, Sample, invalid
from gridedge.outbox import Outbox

from .conftest import as_signed, validate_message

S = NS_PER_S
THU = date_ns(dt.date(2026, 11, 26))  # Thursday: Mon-Wed before it are similar days
PV1 = {"id": "pv1", "kind": "inverter", "energy_export": "inv1/TotWhExp", "power": "inv1/W", "w_max": 10000.0,
       "max_gap_s": 120.0, "baseline": {"method": "x_of_y", "x": 3, "y": 3, "min_days": 3, "lookback_days": 7,
                                        "adjust_hours": 2, "adjust_gap_hours": 0},
       "prequalification": {"full_activation_time_s": 10.0, "ramp_rate_w_per_s": 500.0}}


class Sim:
    """A PV inverter plant and a FlexEngine on one simulated clock; records go through an Outbox."""

    def __init__(self, tmp_path, flex: dict, start_ns: int, pv=None) -> None:
        self.tmp = tmp_path
        self.flex_cfg = parse_flex({"horizon_isps": 4, **flex})  # short horizons keep schema validation quick
        self.t = start_ns
        self.plant = PVInverterPlant(w_max=10000.0, pv=pv if pv is not None else 8000.0, t0_s=start_ns / 1e9)
        self.engine = FlexEngine(self.flex_cfg, tmp_path, now_ns=start_ns)
        self.outbox = Outbox(tmp_path / "outbox.sqlite", gateway_id="gw1")
        self.records = []
        self.also: dict = {}  # more points fed every step: point -> (unit, value of the plant)
        self._docs: list[tuple[str, dict]] = []
        self._seen = 0

    def run(self, seconds: float, dt_s: float = 1.0, at=None, device: str = "live") -> None:
        """device: "live"; "silent" (it answers nothing: the engine only ticks); "timeouts" (every read times out:
        invalid samples)."""
        end = self.t + int(seconds * S)
        step = int(dt_s * S)
        while self.t < end:
            if at:
                for when, action in list(at.items()):
                    if self.t >= when:
                        action()
                        del at[when]
            self.plant.step(dt_s)
            self.t += step
            if device == "timeouts":
                self.engine.feed([invalid(p, self.t, Detail.TIMEOUT) for p in self.points])
            elif device == "live":
                self.engine.feed([Sample("inv1/W", self.t, self.plant.W, "W"),
                                  Sample("inv1/TotWhExp", self.t, self.plant.TotWhExp, "Wh"),
                                  Sample("inv1/WMaxLimPct", self.t, self.plant.WMaxLimPct, "%"),
                                  Sample("inv1/WMaxLimPctEna", self.t, self.plant.WMaxLimPctEna, "")]
                                 + [Sample(p, self.t, value(), unit) for p, (unit, value) in self.also.items()])
            for rec in self.engine.tick(self.t):
                self.outbox.append(rec.kind, f"gridedge/v2/gw1/{rec.kind}", rec.body, rec.data_class)
                self.records.append(rec)

    @property
    def points(self) -> list[str]:
        return ["inv1/W", "inv1/TotWhExp", "inv1/WMaxLimPct", "inv1/WMaxLimPctEna", *self.also]

    def published(self, kind: str) -> list[dict]:
        """What the head-end would receive: the outbox's payloads, each validated against its schema (once)."""
        for r in self.outbox.pending(limit=100000, after_id=self._seen):
            doc = json.loads(r.payload)
            validate_message(r.topic, doc)
            self._docs.append((r.stream, doc))
            self._seen = r.id
        return [doc for stream, doc in self._docs if stream == kind]

    def restart(self) -> None:
        self.engine.close()
        self.engine = FlexEngine(self.flex_cfg, self.tmp, now_ns=self.t)

    def curtail(self, pct: float):
        return lambda: self.plant.write(WMaxLimPct=pct, WMaxLimPctEna=1 if pct < 100 else 0)


def history_days(sim: Sim, days: int) -> None:
    """Let the engine meter `days` ordinary days (60 s samples) before the test day."""
    sim.run(days * 86400, dt_s=60.0)


@pytest.fixture
def curtailed(tmp_path):
    """Three ordinary days, then on Thursday the DSO caps the inverter at 4000 W (40 %) from 11:00 to 11:30."""
    sim = Sim(tmp_path, {"resources": [PV1]}, THU - 3 * DAY_NS)
    history_days(sim, 3)
    sim.run(11 * 3600 - 600, dt_s=60.0)  # until 10:50
    start, end = THU + 11 * 3600 * S, THU + 11 * 3600 * S + 1800 * S
    window = ActivationWindow("dso-42", "dso", ("pv1",), "down", start, end, limit_w=4000.0)
    register = {start: lambda: (sim.curtail(40.0)(), sim.engine.activation(window)), end: sim.curtail(100.0)}
    e0 = {}
    marks = {start: lambda: e0.setdefault("start", sim.plant.TotWhExp),
             start + 900 * S: lambda: e0.setdefault("mid", sim.plant.TotWhExp),
             end: lambda: e0.setdefault("end", sim.plant.TotWhExp)}
    sim.run(3600 + 600, at={**register, **{k + 1: v for k, v in marks.items()}})
    return sim, e0


def test_curtailment_is_verified_and_settled_as_the_curtailed_energy(curtailed):
    sim, e = curtailed
    settlements = sim.published("settlement")
    assert [d["isp"]["start"] for d in settlements] == ["2026-11-26T11:00:00.000Z", "2026-11-26T11:15:00.000Z"]
    measured = [e["mid"] - e["start"], e["end"] - e["mid"]]          # the plant's own export register
    for doc, meas in zip(settlements, measured):
        curtailed_wh = 8000 * 0.25 - meas                                # what the cap took away
        assert doc["direction"] == "down" and doc["activation_id"] == "dso-42"
        assert doc["baseline_wh"] == pytest.approx(2000.0, rel=1e-3)
        assert doc["measured_wh"] == pytest.approx(meas, abs=1.0)
        assert doc["delivered_wh"] == pytest.approx(curtailed_wh, rel=0.01)
        assert doc["requested_wh"] == pytest.approx(1000.0, rel=1e-3)    # 8000 W baseline above the 4000 W cap
        assert doc["pass"] is True and doc["quality"] == "good" and doc["delivery_ratio"] == pytest.approx(
            curtailed_wh / 1000.0, rel=0.01)
        (res,) = doc["resources"]
        assert res["source"] == "register" and res["baseline"]["method"] == "x_of_y"
        assert res["baseline"]["inputs"]["days"] == ["2026-11-23", "2026-11-24", "2026-11-25"]
    verifications = sim.published("verification")
    assert 29 <= len(verifications) <= 31  # every 60 s for 30 min
    late = verifications[-1]
    assert late["measured_w"] == pytest.approx(4000.0, abs=1) and late["baseline_w"] == pytest.approx(8000.0, rel=1e-3)
    assert late["activated_w"] == pytest.approx(4000.0, rel=1e-3) and late["requested_w"] == pytest.approx(4000.0, rel=1e-3)
    assert sim.engine.active == {} and sim.engine.errors == 0
    # availability during the cap, at 11:15: the history says 8000 W would be there, 4000 W is: 4000 W headroom
    during = next(d for d in sim.published("availability") if d["start"] == "2026-11-26T11:15:00.000Z")
    (pv,) = during["resources"]
    assert pv["basis"] == "history" and pv["up_w"][0] == pytest.approx(4000.0, rel=1e-3)
    assert pv["down_w"][0] == pytest.approx(4000.0, rel=1e-3)


def test_no_response_delivers_nothing_and_fails(tmp_path):
    """Property of the pipeline: an activation the device ignores settles with delivered ~ 0 (it fails), and one
    that asks for nothing (a cap above production) passes with delivered ~ 0."""
    sim = Sim(tmp_path, {"resources": [PV1], "tolerance_w": 20.0}, THU - 3 * DAY_NS)
    history_days(sim, 3)
    sim.run(11 * 3600, dt_s=60.0)
    ignored = ActivationWindow("a1", "dso", ("pv1",), "down", sim.t, sim.t + 900 * S, requested_w=3000.0)
    sim.engine.activation(ignored)
    sim.run(1200)
    nothing = ActivationWindow("a2", "dso", ("pv1",), "down", sim.t - sim.t % (900 * S) + 900 * S,
                               sim.t - sim.t % (900 * S) + 1800 * S, limit_w=9000.0)
    sim.engine.activation(nothing)
    sim.run(1800)
    a1, a2 = sim.published("settlement")
    assert a1["activation_id"] == "a1" and abs(a1["delivered_wh"]) < 5 and a1["pass"] is False
    assert a2["requested_wh"] == 0.0 and abs(a2["delivered_wh"]) < 5 and a2["pass"] is True
    assert a2["delivery_ratio"] is None


def test_a_restart_mid_activation_continues_without_duplicates(tmp_path):
    sim = Sim(tmp_path, {"resources": [PV1]}, THU - 3 * DAY_NS)
    history_days(sim, 3)
    sim.run(11 * 3600, dt_s=60.0)
    start = sim.t
    sim.engine.activation(ActivationWindow("a1", "tso", ("pv1",), "down", start, start + 2700 * S, limit_w=5000.0))
    sim.curtail(50.0)()
    sim.run(1200)          # the first ISP settles; the agent stops at 11:20
    sim.restart()
    sim.run(2400)          # 11:20 -> 12:00, the second and third ISPs settle after the restart
    docs = sim.published("settlement")
    assert [d["isp"]["start"][11:16] for d in docs] == ["11:00", "11:15", "11:30"]
    assert all(d["pass"] and d["quality"] == "good" for d in docs), docs
    assert docs[1]["delivered_wh"] == pytest.approx(docs[0]["delivered_wh"], rel=0.01)


def test_nomination_is_the_baseline(tmp_path):
    flex = {"resources": [{**PV1, "baseline": {"method": "nomination"}}], "gate_closure_s": 300}
    sim = Sim(tmp_path, flex, THU + 10 * 3600 * S)
    with pytest.raises(NominationRejected, match="past gate closure"):
        sim.engine.nomination(json.dumps({"schema": "gridedge.nomination/2", "nomination_id": "n0", "resource": "pv1",
                                          "start": iso_utc(sim.t), "isp_s": 900, "w": [1.0]}).encode(), sim.t)
    nom = {"schema": "gridedge.nomination/2", "nomination_id": "n1", "resource": "pv1",
           "start": "2026-11-26T11:00:00Z", "isp_s": 900, "w": [7000.0, 7000.0]}
    validate_message("gridedge/v3/gw1/nomination/fsp-1", as_signed(nom, "fsp-1", "gw1"))
    assert sim.engine.nomination(json.dumps(nom).encode(), sim.t).values_w == (7000.0, 7000.0)
    newer = {**nom, "nomination_id": "n2", "w": [7000.0, 7000.0]}
    assert sim.engine.nomination(json.dumps(newer).encode(), sim.t).repeated is False
    stale = {**nom, "w": [1.0, 1.0]}  # n1 again (a re-delivery with other content): must not undo n2
    assert sim.engine.nomination(json.dumps(stale).encode(), sim.t).repeated is True
    start = THU + 11 * 3600 * S
    sim.run(2 * 3600, dt_s=10.0, at={start: lambda: (sim.curtail(50.0)(), sim.engine.activation(
        ActivationWindow("a1", "dso", ("pv1",), "down", start, start + 1800 * S, requested_w=2000.0)))})
    docs = sim.published("settlement")
    assert [d["baseline_wh"] for d in docs] == [1750.0, 1750.0]
    assert docs[1]["delivered_wh"] == pytest.approx(1750.0 - 1250.0, abs=1.0)  # nominated 7000 W, capped at 5000 W
    assert docs[1]["resources"][0]["baseline"]["inputs"] == {"nominations": ["n2"]}
    assert docs[1]["pass"] is True  # 500 Wh delivered of 500 Wh requested


def test_availability_prequalification_and_a_step_test(tmp_path):
    flex = {"resources": [PV1, {"id": "bat1", "kind": "battery", "power": "bat1/W", "soc": "bat1/SoC",
                                "capacity_wh": 10000.0, "max_charge_w": 4000.0, "max_discharge_w": 4000.0}],
            "horizon_isps": 4}
    sim = Sim(tmp_path, flex, THU + 10 * 3600 * S)
    sim.engine.feed([Sample("bat1/W", sim.t, 0.0, "W"), Sample("bat1/SoC", sim.t, 50.0, "%")])
    sim.also.update({"bat1/W": ("W", lambda: 0.0), "bat1/SoC": ("%", lambda: 50.0)})  # an idle battery, read on
    step = sim.t + 120 * S
    sim.engine.start_step_test("st-1", "pv1", step, target_w=4000.0, duration_s=60.0)
    sim.run(900 + 60, dt_s=0.5, at={step: sim.curtail(40.0)})
    avail = sim.published("availability")
    assert len(avail) == 2 and avail[0]["n"] == 4
    pv = next(r for r in avail[1]["resources"] if r["resource"] == "pv1")
    bat = next(r for r in avail[1]["resources"] if r["resource"] == "bat1")
    # curtailed at 4000 W; without history the output it had before the limit (8000 W) is assumed to persist
    assert (pv["up_w"], pv["down_w"], pv["basis"]) == ([4000.0] * 4, [4000.0] * 4, "persistence")
    assert bat["up_w"] == [4000.0] * 4 and bat["down_w"] == [4000.0] * 4
    assert avail[1]["up_w"] == [8000.0] * 4 and avail[1]["down_w"] == [8000.0] * 4
    pre = sim.published("prequalification")
    assert [p["test"] is None for p in pre] == [True, False]
    assert pre[0]["declared"]["full_activation_time_s"] == 10.0
    result = pre[1]["test"]["result"]
    assert pre[1]["test"]["ok"] and result["ramp_w_per_s"] == pytest.approx(1000.0, rel=0.05)
    assert result["settled"] and result["before_w"] == pytest.approx(8000.0)


def test_daily_accuracy_record(tmp_path):
    sim = Sim(tmp_path, {"resources": [PV1], "placebo_days": 2, "accuracy_window": "10:00-14:00"}, THU - 4 * DAY_NS,
              pv=clear_sky_pv(8000.0))
    history_days(sim, 4)
    sim.run(120, dt_s=60.0)
    docs = sim.published("baseline_accuracy")  # once a day, from the first day with history on
    assert [d["ts"][:10] for d in docs] == ["2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25",
                                              "2026-11-26"]
    doc = docs[-1]
    (res,) = doc["resources"]
    assert res["configured"] == "x_of_y" and doc["window"] == ["10:00", "14:00"]
    configured = res["methods"][0]
    assert configured["method"] == "x_of_y" and configured["days"] == 0  # x=3 of 3 similar days: not yet
    rolling = next(m for m in res["methods"] if m["method"] == "rolling_average")
    assert rolling["days"] == 0 and rolling["reason"]
    before = next(m for m in res["methods"] if m["method"] == "meter_before_after")
    assert before["days"] == 2 and before["isps"] == 2 * 16 and before["mdape_pct"] > 1  # clear sky is not flat


def test_bad_inputs_are_refused_and_a_failing_stage_does_not_stop_the_others(tmp_path, monkeypatch):
    sim = Sim(tmp_path, {"resources": [PV1]}, THU + 10 * 3600 * S)
    with pytest.raises(ValueError, match="unknown flex resource"):
        sim.engine.activation(ActivationWindow("a", "dso", ("pv9",), "up", sim.t, sim.t + S, requested_w=1.0))
    assert sim.engine.end_activation("nope", sim.t) is False
    with pytest.raises(ValueError, match="unknown flex resource"):
        sim.engine.start_step_test("t", "pv9", sim.t, 1.0, 1.0)

    # Fault injection (no real part can make SQLite fail on demand here): the accuracy stage raises.
    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sim.engine, "evaluate", broken)
    sim.engine.history.add([])  # history exists but empty: accuracy is skipped until there is data
    sim.run(1200)
    assert sim.published("availability") and sim.engine.errors == 1  # once a day: tried once, logged, counted


def test_a_stored_activation_of_a_resource_no_longer_configured_is_closed(tmp_path):
    sim = Sim(tmp_path, {"resources": [PV1, {**PV1, "id": "pv2"}]}, THU + 10 * 3600 * S)
    sim.engine.activation(ActivationWindow("a1", "dso", ("pv2",), "up", sim.t, sim.t + 3600 * S, requested_w=1.0))
    sim.engine.close()
    sim.flex_cfg = parse_flex({"horizon_isps": 4, "resources": [PV1]})  # pv2 removed from the configuration
    sim.engine = FlexEngine(sim.flex_cfg, tmp_path, now_ns=sim.t)
    assert sim.engine.active == {}
    sim.run(1000)
    assert sim.engine.errors == 0 and sim.engine.history.open_activations() == []


# ---------------------------------------------------------------- issue 11 (an outside head-end's recomputation)

def test_verification_never_reports_stale_power_as_measured(tmp_path):
    """Defect 17: a device silent for 70 s (max_gap_s 30) kept its last power as measured_w."""
    sim = Sim(tmp_path, {"resources": [{**PV1, "max_gap_s": 30.0}], "verification_interval_s": 5}, THU + 11 * 3600 * S)
    sim.engine.activation(ActivationWindow("a1", "dso", ("pv1",), "down", sim.t, sim.t + 900 * S, limit_w=4000.0))
    sim.run(60)
    last = sim.t
    sim.run(70, device="silent")
    docs = sim.published("verification")
    fresh = [d for d in docs if d["ts"] <= iso_utc(last + 30 * S)]
    stale = [d for d in docs if d["ts"] > iso_utc(last + 30 * S)]
    assert len(stale) >= 7 and all(d["measured_w"] == pytest.approx(8000.0) for d in fresh)
    assert [(d["measured_w"], d["activated_w"], d["resources"][0]["measured_w"]) for d in stale] == \
        [(None, None, None)] * len(stale)


def test_activation_latency_makes_no_sliver_isp_and_counts_against_delivery(tmp_path):
    """Defect 18: offered for 11:00-11:15, the activation goes active 0.03 s after 11:00 and control ends it at its
    start + duration_s; the 0.03 s past 11:15 must not become a settlement record of its own."""
    sim = Sim(tmp_path, {"resources": [PV1]}, THU - 3 * DAY_NS)
    history_days(sim, 3)
    sim.run(11 * 3600 - 600, dt_s=60.0)  # until 10:50
    start = THU + 11 * 3600 * S + 30_000_000
    window = ActivationWindow("dso-43", "dso", ("pv1",), "down", start, start + 900 * S, limit_w=4000.0)
    sim.run(1800 + 600, at={start: lambda: (sim.curtail(40.0)(), sim.engine.activation(window)),
                            start + 900 * S: sim.curtail(100.0)})
    docs = sim.published("settlement")
    assert [d["isp"]["start"] for d in docs] == ["2026-11-26T11:00:00.000Z"]
    (doc,) = docs
    assert doc["active_s"] == 900.0
    assert doc["requested_wh"] == pytest.approx(doc["baseline_wh"] - 1000.0, abs=1e-6)  # the whole ISP was asked for
    assert doc["delivered_wh"] < doc["requested_wh"] and doc["pass"] is True  # the plant's second of latency and ramp
    assert sim.engine.active == {} and sim.engine.errors == 0


def test_availability_while_curtailed_offers_the_unconstrained_output(tmp_path):
    """Defect 21: without history, a PV unit capped at 40 % has the headroom up to what it could produce: the
    device's available power (WAval) where it reports it, else its output before the limit."""
    ups = []
    for k, reports in enumerate((None, "plant", float("nan"))):
        sim = Sim(tmp_path / str(k), {"resources": [PV1]}, THU + 10 * 3600 * S,
                  pv=lambda t_s: 8000.0 if t_s < (THU + 10 * 3600 * S) / 1e9 + 300 else 7000.0)  # a cloud at 10:05
        if reports is not None:
            sim.also["inv1/WAval"] = ("W", sim.plant.available_w if reports == "plant" else lambda: reports)
        sim.run(900 + 10, at={sim.t + 120 * S: sim.curtail(40.0)})  # capped at 4000 W from 10:02
        (pv,) = sim.published("availability")[-1]["resources"]
        assert (pv["down_w"], pv["basis"]) == ([4000.0] * 4, "persistence")
        ups.append(pv["up_w"])
    # the level before the limit (8000 W); what the device says (7000 W); a NaN from the device is no figure
    assert ups == [[4000.0] * 4, [3000.0] * 4, [4000.0] * 4]


def test_a_frozen_or_silent_device_has_no_recent_power_measurement(tmp_path):
    """Defect 21: a device that stopped answering got "no w_max configured" (its WMax reading was invalid) or a
    figure from its last power reading, instead of the documented reason."""
    pv1 = {k: v for k, v in PV1.items() if k != "w_max"}  # the rating comes from the device's WMax point
    for frozen in (True, False):
        sim = Sim(tmp_path / str(frozen), {"resources": [{**pv1, "max_gap_s": 30.0}]}, THU + 10 * 3600 * S)
        sim.also["inv1/WMax"] = ("W", lambda: 10000.0)
        sim.run(600)
        assert sim.published("availability")[-1]["resources"][0]["up_w"] is not None
        sim.run(310, device="timeouts" if frozen else "silent")
        last = sim.published("availability")[-1]
        assert last["start"] == "2026-11-26T10:15:00.000Z"
        assert last["resources"][0]["reason"] == "no recent power measurement" and last["up_w"] == [0.0] * 4
