"""English paragraphs for the NaturalReasoning corpus: reasoning by topic, and plain prose.

Each generator takes an RNG and returns one paragraph whose numbers are
computed, so the reasoning in it is right. ``[a|b|c]`` picks one option (see
``pick``); many small choices keep template text from repeating n-grams the
way real pages do not.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

_ALT = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")

NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Julia",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq")
TOWNS = ("Alder Bay", "Brookfield", "Carrow", "Dunmere", "Eastholm", "Fenwick", "Glenrock",
         "Harwick", "Ivybridge", "Kelso Point", "Larchmont", "Millbrook", "Northgate", "Oakridge")


def pick(template: str, rng: random.Random) -> str:
    """Resolve every ``[a|b|c]`` in ``template`` to one of its options."""
    return _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), template)


def _r(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}".rstrip("0").rstrip(".") if nd else str(round(x))


def physics_fall(rng: random.Random) -> str:
    h = rng.choice([5, 8, 12, 20, 45, 80, 125]) * rng.choice([1, 1, 2])
    t = math.sqrt(2 * h / 9.81)
    return pick(
        f"[Consider|Suppose we take|Imagine] a [ball|stone|steel marble|small wooden block] "
        f"[dropped|released from rest] at a height of {h} m. [Ignoring|Neglecting] air resistance, "
        f"it accelerates at g = 9.81 m/s². Because the distance fallen is h = g t²/2, the time "
        f"to reach the ground is t = √(2h/g) ≈ {_r(t)} s. It follows that the speed on impact is "
        f"v = g t ≈ {_r(9.81 * t)} m/s. [Notice that|Note that|Interestingly,] doubling the "
        f"height does not double the speed: since v grows with the square root of h, the speed "
        f"rises only by a factor of √2 ≈ 1.41.", rng)


def physics_pendulum(rng: random.Random) -> str:
    length = rng.choice([0.25, 0.5, 1.0, 1.5, 2.0, 4.0])
    period = 2 * math.pi * math.sqrt(length / 9.81)
    return pick(
        f"For small swings a pendulum of length L = {length} m has period T = 2π√(L/g) ≈ "
        f"{_r(period)} s, [independent of the mass of the bob|whatever the mass of the bob]. "
        f"[Therefore|Hence|Consequently] a pendulum four times as long, {length * 4:g} m, swings "
        f"with twice the period, about {_r(2 * period)} s. The approximation sin θ ≈ θ "
        f"[breaks down|fails] for wide swings, which is why [clockmakers|engineers] keep the "
        f"amplitude small.", rng)


def physics_circuit(rng: random.Random) -> str:
    r, v = rng.choice([10, 22, 47, 100, 220, 470]), rng.choice([3, 5, 9, 12, 24])
    i = v / r
    return pick(
        f"[Take|Consider] a {r} Ω resistor across a {v} V supply. By Ohm's law the current is "
        f"I = V/R = {_r(i, 3)} A, and the power dissipated is P = V·I = {_r(v * i, 3)} W. If we "
        f"connect a second, identical resistor in series, the total resistance doubles to {2 * r} Ω, "
        f"so the current halves and the total power falls to {_r(v * i / 2, 3)} W. In parallel "
        f"[instead|on the other hand], each resistor sees the full {v} V and the power doubles.", rng)


def physics_heat(rng: random.Random) -> str:
    m, dt = rng.choice([0.2, 0.5, 1.0, 1.5, 2.0]), rng.choice([10, 25, 40, 60, 80])
    q = m * 4186 * dt
    w = rng.choice([500, 1000, 1500, 2000])
    return pick(
        f"How long does a {w} W kettle take to heat {m} kg of water by {dt} °C? The heat needed "
        f"is Q = m·c·ΔT = {m} × 4186 × {dt} ≈ {_r(q / 1000, 1)} kJ. [Assuming|If we assume] no "
        f"losses, the time is Q/P ≈ {_r(q / w, 0)} s. Real kettles lose heat to the air, "
        f"[so|hence] the measured time is [somewhat|always] longer.", rng)


def finance_compound(rng: random.Random) -> str:
    p, r, n = rng.choice([1000, 2500, 5000, 10000]), rng.choice([2, 3, 4, 5, 7]), rng.choice([5, 10, 20, 30])
    fv = p * (1 + r / 100) ** n
    return pick(
        f"[Suppose|Say] {rng.choice(NAMES)} invests ${p:,} at {r}% a year, compounded annually. "
        f"After {n} years the balance is {p:,} × 1.{r:02d}^{n} ≈ ${fv:,.0f}. Simple interest "
        f"would have paid only ${p * r * n / 100:,.0f} in total, [so|which means] compounding "
        f"adds ${fv - p - p * r * n / 100:,.0f}. By the rule of 72 the money doubles in about "
        f"{_r(72 / r, 1)} years, [because|since] ln 2 ≈ 0.69 and r is small.", rng)


def finance_loan(rng: random.Random) -> str:
    p, r, years = rng.choice([150000, 200000, 320000]), rng.choice([3, 4, 5, 6]), rng.choice([15, 25, 30])
    i, n = r / 1200, years * 12
    pay = p * i / (1 - (1 + i) ** -n)
    return pick(
        f"A {years}-year mortgage of ${p:,} at {r}% [a year|annual interest] is repaid in {n} "
        f"monthly instalments. The annuity formula A = P·i / (1 − (1+i)^−n) with i = {r}/1200 "
        f"gives A ≈ ${pay:,.2f}. Over the whole term the borrower pays ${pay * n:,.0f}, "
        f"[so|which means] the interest [alone|by itself] comes to ${pay * n - p:,.0f}. A shorter "
        f"term raises the monthly payment but [cuts|reduces] the total interest.", rng)


def finance_npv(rng: random.Random) -> str:
    cost, cash, rate = rng.choice([800, 1000, 1200]), rng.choice([300, 350, 400]), rng.choice([6, 8, 10])
    npv = -cost + sum(cash / (1 + rate / 100) ** t for t in range(1, 5))
    verdict = "accept" if npv > 0 else "reject"
    return pick(
        f"A project costs ${cost} today and returns ${cash} at the end of each of the next four "
        f"years. Discounting at {rate}%, the net present value is −{cost} + Σ {cash}/1.{rate:02d}^t "
        f"≈ ${npv:,.1f}. [Since|Because] the NPV is {'positive' if npv > 0 else 'negative'}, a firm "
        f"with that cost of capital should {verdict} it. [Note that|Observe that] the undiscounted "
        f"sum, ${4 * cash}, would mislead: money later is worth less than money now.", rng)


def law_contract(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    price = rng.choice([400, 900, 2500, 7000])
    return pick(
        f"{a} offers to sell a [used car|boat|piano|printing press] to {b} for ${price}, the offer to "
        f"stay open until Friday. On Thursday {b} replies: 'I accept, if you include the "
        f"[spare tyres|trailer|bench|spare parts].' [Under|Following] the mirror-image rule this "
        f"is not an acceptance but a counter-offer, which [terminates|ends] the original offer. "
        f"[Therefore|Hence], if {a} sells to someone else on Friday, {b} has no claim for breach: "
        f"no contract was ever formed.", rng)


def law_negligence(rng: random.Random) -> str:
    a = rng.choice(NAMES)
    return pick(
        f"To succeed in negligence, a claimant must show a duty of care, a breach of it, and "
        f"damage caused by the breach. {a}, a shop owner, left a [wet floor|loose carpet|broken "
        f"step] unmarked for [two hours|a whole afternoon]. A customer who slipped can show duty "
        f"(occupiers owe it to visitors) and breach (a reasonable owner would have put up a sign). "
        f"Causation is the [harder|contested] element: if the customer was [running|looking at "
        f"a phone], a court may reduce the damages for contributory negligence [rather than|"
        f"instead of] deny the claim.", rng)


def law_limitation(rng: random.Random) -> str:
    y, lim = rng.randint(2009, 2019), rng.choice([3, 6])
    return pick(
        f"A limitation period of {lim} years runs from the date the cause of action accrued. If "
        f"a [builder|supplier|landlord] breached the contract in March {y}, the claim must be "
        f"filed by March {y + lim}. A claim filed in {y + lim + 1} is time-barred [unless|except "
        f"where] the claimant could not have discovered the breach earlier, [because|since] in "
        f"that case the period starts from discovery.", rng)


def algo_binary_search(rng: random.Random) -> str:
    n = rng.choice([1000, 65536, 10**6, 10**9])
    return pick(
        f"Binary search halves the interval at every step, so on a sorted array of {n:,} "
        f"elements it needs at most ⌈log₂({n:,})⌉ + 1 = {math.ceil(math.log2(n)) + 1} "
        f"comparisons. A linear scan may need all {n:,}. [The catch is that|However,] the array "
        f"must be sorted: sorting first costs O(n log n), [which only pays off|and this only pays "
        f"off] when we search many times.", rng)


def algo_mergesort(rng: random.Random) -> str:
    n = rng.choice([8, 16, 1024, 4096])
    return pick(
        f"Merge sort splits the input in half, sorts each half recursively and merges them in "
        f"linear time. The recurrence T(n) = 2T(n/2) + n [therefore|hence] solves to "
        f"T(n) = n log₂ n: for n = {n} that is about {n * int(math.log2(n)):,} steps, as there "
        f"are log₂ n = {int(math.log2(n))} levels of recursion and each level does n units of "
        f"work. [Unlike|In contrast to] quicksort, its worst case is the same as its average.", rng)


def algo_coins(rng: random.Random) -> str:
    target = rng.choice([6, 12, 15, 30])
    return pick(
        f"With coins of 1, 3 and 4 the greedy rule (always take the largest coin that fits) "
        f"[fails|is not optimal]: for 6 it takes 4+1+1, three coins, while 3+3 needs two. "
        f"Dynamic programming fixes this: let best(v) = 1 + min(best(v−c)) over coins c ≤ v, "
        f"with best(0) = 0. Filling the table up to {target} costs O({target} × 3) steps "
        f"[and|, and it] gives best({target}) = {_coins(target)}.", rng)


def _coins(target: int) -> int:
    best = [0] + [10**9] * target
    for v in range(1, target + 1):
        best[v] = 1 + min(best[v - c] for c in (1, 3, 4) if c <= v)
    return best[target]


def medicine_bayes(rng: random.Random) -> str:
    prev, sens, spec = rng.choice([0.5, 1, 2, 5]), rng.choice([90, 95, 99]), rng.choice([90, 95, 98])
    tp, fp = prev * sens / 100, (100 - prev) * (100 - spec) / 100
    ppv = tp / (tp + fp)
    return pick(
        f"A screening test has sensitivity {sens}% and specificity {spec}%, and the disease "
        f"affects {prev}% of the people tested. [Out of|Among] 10,000 people, {prev * 100:g} are ill "
        f"and about {tp * 100:g} of them test positive, while {fp * 100:g} healthy people also "
        f"test positive. [So|Hence] a positive result means illness only {ppv:.0%} of the time. "
        f"[This is why|That is why] a positive screen is followed by a more specific test.", rng)


def medicine_dose(rng: random.Random) -> str:
    kg, mgkg, conc = rng.choice([12, 18, 25, 40]), rng.choice([10, 15]), rng.choice([20, 40, 50])
    dose = kg * mgkg
    return pick(
        f"A child weighing {kg} kg is prescribed {mgkg} mg/kg of [paracetamol|a liquid medicine]. "
        f"The dose is {kg} × {mgkg} = {dose} mg. The syrup holds {conc} mg per mL, [so|therefore] "
        f"the volume to give is {dose}/{conc} = {_r(dose / conc)} mL. Checking the units at each "
        f"step [catches|prevents] the tenfold errors that occur when mg and mL are confused.", rng)


def medicine_halflife(rng: random.Random) -> str:
    h, d = rng.choice([4, 6, 8, 12]), rng.choice([200, 400, 800])
    return pick(
        f"A drug with a half-life of {h} hours is given as a single {d} mg dose. After {h} hours "
        f"{d // 2} mg remain, after {2 * h} hours {d // 4} mg, and after {4 * h} hours about "
        f"{d / 16:g} mg. [Because|Since] elimination is first-order, the fraction left after t "
        f"hours is (1/2)^(t/{h}); it takes about five half-lives, {5 * h} hours, to clear 97% of it.", rng)


def history_causes(rng: random.Random) -> str:
    town, y = rng.choice(TOWNS), rng.randint(1700, 1880)
    return pick(
        f"Why did {town} grow so fast after {y}? The [canal|railway|harbour] opened that year cut "
        f"the cost of moving [grain|coal|wool] by [half|two thirds], so mills moved to the "
        f"[valley|coast]. [Yet|But] the parish records show the population rising a decade "
        f"earlier, [which suggests|suggesting] that the [canal|railway|harbour] followed growth "
        f"rather than caused it. A careful historian weighs both sources before [concluding|"
        f"deciding], [because|since] correlation in time is not causation.", rng)


def history_dates(rng: random.Random) -> str:
    a, span = rng.randint(1400, 1850), rng.randint(12, 90)
    return pick(
        f"The treaty signed in {a} [held|lasted] until {a + span}, {span} years. The chronicle "
        f"that calls it 'a brief truce' was written in {a + span + rng.randint(40, 150)}, long after "
        f"the events, [so|and therefore] it is a secondary source; the letters of the envoys, "
        f"written in {a}, [carry more weight|are more reliable] on what the parties intended.", rng)


REASONING: dict[str, tuple[Callable[[random.Random], str], ...]] = {
    "physics": (physics_fall, physics_pendulum, physics_circuit, physics_heat),
    "finance": (finance_compound, finance_loan, finance_npv),
    "law": (law_contract, law_negligence, law_limitation),
    "algorithms": (algo_binary_search, algo_mergesort, algo_coins),
    "medicine": (medicine_bayes, medicine_dose, medicine_halflife),
    "history": (history_causes, history_dates),
}

_PROSE = (
    "[Our trip|The weekend|The festival] in {town} [began|started] on a [grey|sunny|windy] "
    "[morning|afternoon] in {month}.",
    "The [old town|market square|harbour front] was [busy|full of people|quiet] and the "
    "[cafés|bakeries|stalls] smelled of [fresh bread|coffee|roasted chestnuts].",
    "{name} [met us|waited for us] at the [station|bridge|museum entrance] with a [map|"
    "guidebook|bag of apples].",
    "We [walked|wandered|cycled] along the [river|canal|coast path] for [an hour|most of the "
    "day|a few kilometres].",
    "The [museum|gallery|cathedral] has a [lovely|famous|small] collection of [paintings|"
    "ceramics|old maps] from the region.",
    "In the evening there was [live music|a street parade|a fireworks show] near the [square|"
    "pier|park].",
    "[Dinner|Lunch] was [grilled fish|a vegetable stew|pasta with mushrooms] at a [tiny|family-run|"
    "crowded] place [near the port|behind the church|on the main street].",
    "The [hotel|guesthouse|hostel] was [clean|comfortable|simple] and the staff were [friendly|"
    "helpful|kind].",
    "[Photos|Pictures] from the day are in the gallery below.",
    "We will [definitely|certainly|surely] come back [next year|in the spring|for the winter market].",
    "The local team [won|drew|lost] its match on Saturday in front of {n} [fans|supporters].",
    "The [new library|community garden|swimming pool] opens to the public on {month} {day}.",
)
MONTHS = ("January", "March", "April", "May", "June", "July", "September", "October", "November")


def prose_sentences(rng: random.Random, n: int) -> list[str]:
    """Up to ``n`` distinct descriptive sentences, with no argument in them."""
    out = []
    for tpl in rng.sample(_PROSE, min(n, len(_PROSE))):
        s = tpl.format(town=rng.choice(TOWNS), name=rng.choice(NAMES), month=rng.choice(MONTHS),
                       n=rng.randint(200, 9000), day=rng.randint(1, 28))
        out.append(pick(s, rng))
    return out


def prose_paragraph(rng: random.Random, sentences: int) -> str:
    """One paragraph of prose: the LLM filter should turn it down."""
    return " ".join(prose_sentences(rng, sentences))


def prose_paragraphs(rng: random.Random, sentences: int) -> list[str]:
    """Distinct prose sentences grouped into paragraphs of two to five."""
    sents = prose_sentences(rng, sentences)
    out = []
    while sents:
        k = rng.randint(2, 5)
        out.append(" ".join(sents[:k]))
        sents = sents[k:]
    return out


def reasoning_paragraph(rng: random.Random, topic: str) -> str:
    return rng.choice(REASONING[topic])(rng)
