-- Session settings that make the text form of every value identical on both sides.
SET TimeZone = 'UTC';
SET extra_float_digits = 3;
SET DateStyle = 'ISO, YMD';
