from timepoint_billing.charts import Series, bar_chart


def test_bars_share_one_axis_and_scale_to_the_peak() -> None:
    chart = bar_chart(
        ["Mon", "Tue"],
        [Series("Requests", [10, 4], "bar-requests"), Series("Errors", [0, 2], "bar-errors")],
    )
    assert not chart.empty
    assert len(chart.bars) == 4
    tallest = max(bar.height for bar in chart.bars)
    requests_monday = chart.bars[0]
    assert requests_monday.height == tallest
    assert requests_monday.title == "Mon: 10 requests"
    assert [tick.label for tick in chart.y_ticks] == ["0", "5", "10"]
    # every bar stands on the baseline
    assert all(round(bar.y + bar.height, 2) == chart.baseline_y for bar in chart.bars)


def test_an_empty_period_says_so() -> None:
    chart = bar_chart(["Mon"], [Series("Requests", [0], "bar-requests")])
    assert chart.empty
    assert chart.bars[0].height == 0


def test_long_periods_label_about_a_week_of_dates() -> None:
    labels = [f"d{i}" for i in range(30)]
    chart = bar_chart(labels, [Series("Requests", list(range(30)), "bar-requests")])
    assert 5 <= len(chart.x_ticks) <= 10
    assert [tick.label for tick in chart.y_ticks][-1] == "50"
