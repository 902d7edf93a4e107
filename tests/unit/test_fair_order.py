"""The fair start order: pinned jobs first, then round-robin between owners, and moving a job."""

from __future__ import annotations

from modules.services.fair_order import Waiting, fair_order, moved


class Line:
    """A waiting line driven like a queue: submit, start the head, recompute after each change."""

    def __init__(self) -> None:
        self.waiting: list[Waiting] = []
        self.pins: dict[str, int] = {}
        self.last_started: dict[str | None, int] = {}
        self.starts = 0

    def submit(self, owner: str | None, count: int = 1) -> list[str]:
        ids = []
        for _ in range(count):
            seq = len(self.waiting) + self.starts + 1
            self.waiting.append(Waiting(f"{owner}-{seq}", owner, (1, seq)))
            ids.append(f"{owner}-{seq}")
        return ids

    def order(self) -> list[str]:
        return fair_order(self.waiting, self.pins, self.last_started)

    def start(self) -> str:
        head = self.order()[0]
        entry = next(w for w in self.waiting if w.id == head)
        self.waiting.remove(entry)
        self.pins.pop(head, None)
        self.starts += 1
        self.last_started[entry.owner] = self.starts
        return head


def owners(ids: list[str]) -> list[str]:
    return [i.rsplit("-", 1)[0] for i in ids]


def test_one_job_of_a_second_user_waits_behind_at_most_one_of_the_first_users_ten() -> None:
    line = Line()
    line.submit("alice", 10)
    line.start()  # alice's first job runs
    (bobs,) = line.submit("bob")
    assert bobs in (line.start(), line.start())


def test_the_job_of_a_user_submitted_last_starts_next_when_nothing_of_theirs_ran_yet() -> None:
    line = Line()
    line.submit("alice", 10)
    (bobs,) = line.submit("bob")
    started = [line.start(), line.start()]
    assert bobs in started


def test_three_users_take_turns_and_each_keeps_their_own_order() -> None:
    line = Line()
    a = line.submit("a", 3)
    b = line.submit("b", 2)
    c = line.submit("c", 3)
    starts = [line.start() for _ in range(8)]
    assert owners(starts) == ["a", "b", "c", "a", "b", "c", "a", "c"]
    assert [s for s in starts if s in a] == a and [s for s in starts if s in c] == c and [s for s in starts if s in b] == b


def test_a_user_who_waited_longest_since_their_last_start_goes_first() -> None:
    line = Line()
    line.submit("a")
    line.submit("b")
    assert owners([line.start(), line.start()]) == ["a", "b"]
    line.submit("b")
    line.submit("a")
    assert owners(line.order()) == ["a", "b"]  # a's job started before b's did


def test_jobs_without_an_owner_count_as_one_user() -> None:
    line = Line()
    line.submit(None, 3)
    line.submit("alice")
    assert owners(line.order()) == ["None", "alice", "None", "None"]


def test_pinned_jobs_come_first_in_their_pin_order() -> None:
    line = Line()
    a = line.submit("a", 2)
    b = line.submit("b", 2)
    line.pins = {b[1]: 0, a[1]: 1}
    assert line.order() == [b[1], a[1], a[0], b[0]]


def test_moving_a_job_pins_it_and_every_job_ahead_of_it() -> None:
    order = ["j1", "j2", "j3", "j4", "j5"]
    assert moved(order, [], "j4", 2) == ["j1", "j4"]
    assert moved(order, [], "j5", 1) == ["j5"]
    assert moved(order, ["j1", "j2"], "j5", 1) == ["j5", "j1", "j2"]  # earlier pins stay, behind it
    assert moved(order, ["j1", "j2", "j3"], "j1", 3) == ["j2", "j3", "j1"]  # a pinned job moved back
    assert moved(order, [], "j2", 99) == order[:1] + order[2:] + ["j2"]  # past the end: last, all pinned


def test_a_moved_job_starts_at_its_new_place_and_the_fair_order_follows() -> None:
    line = Line()
    a = line.submit("a", 3)
    (b,) = line.submit("b")
    line.pins = {job_id: n for n, job_id in enumerate(moved(line.order(), [], a[2], 1))}
    assert line.order() == [a[2], a[0], b, a[1]]
    assert line.start() == a[2]
    assert line.order() == [b, a[0], a[1]]  # the pin is used up; b's turn, then a's
