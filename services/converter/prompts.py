"""The built-in calibration text for --int8_kv_cache when no --calib_dataset is
given: short news-like articles on varied topics, with numbers, quotes, code
and lists, so activations see more than one kind of text."""

BUILTIN_ARTICLES = (
    "Born in north-east France, Soyer trained as a chef in Paris before moving to London, where he "
    "ran the kitchen of the Reform Club and designed soup kitchens during the Irish famine of 1847.",
    "The city council voted 7-2 on Tuesday to expand the bus network, adding 14 routes and lowering "
    "fares for students. \"We can't wait another decade,\" the mayor said. Critics called the plan rushed.",
    "Researchers reported that a new battery chemistry kept 92% of its capacity after 3,000 charge "
    "cycles at 45 degrees Celsius. The team said commercial cells could follow within five years.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "The function above returns the n-th Fibonacci number in linear time and constant memory.",
    "Shares fell 3.4 percent in early trading after the company cut its forecast, citing weaker demand "
    "in Europe and higher shipping costs. Analysts had expected revenue of $12.1 billion for the quarter.",
    "What is AGI? Artificial general intelligence is a machine that can learn any intellectual task that "
    "a human being can. Some researchers doubt it is near; others think it could arrive within decades.",
    "Heavy rain flooded roads across the region overnight. Emergency services rescued 27 people from cars, "
    "and schools will stay closed on Friday. Forecasters expect the storm to move east by the weekend.",
    "Ingredients: 2 cups of flour, 1 teaspoon of salt, 3 eggs, 250 ml of milk. Whisk the eggs and milk, "
    "fold in the flour, rest the batter for 30 minutes, then cook thin pancakes in a hot buttered pan.",
)
