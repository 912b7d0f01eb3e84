"""Incremental UTF-8 and stop-string scanning."""

from phi4mm.engine.streaming import StopScanner, Utf8Stream


def feed_all(scanner, pieces):
    out, hit = [], False
    for p in pieces:
        text, hit = scanner.feed(p)
        out.append(text)
        if hit:
            break
    return "".join(out), hit


def test_stop_string_split_across_pieces_is_never_emitted():
    text, hit = feed_all(StopScanner(("###",)), ["Hello #", "#", "# world"])
    assert (text, hit) == ("Hello ", True)


def test_partial_prefix_released_when_it_does_not_complete():
    s = StopScanner(("END",))
    assert s.feed("abc E") == ("abc ", False)
    assert s.feed("x") == ("Ex", False)
    assert s.flush() == ""


def test_earliest_of_several_stops_wins():
    assert feed_all(StopScanner(("b", "a")), ["xxab"]) == ("xx", True)


def test_no_stops_passes_through():
    assert StopScanner(()).feed("anything") == ("anything", False)


def test_utf8_multibyte_split_across_tokens():
    s = Utf8Stream()
    data = "é😀".encode()
    assert s.feed(data[:1]) == ""
    assert s.feed(data[1:3]) == "é"
    assert s.feed(data[3:]) == "😀"
    assert s.flush() == ""
