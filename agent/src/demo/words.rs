//! The words the demo rows are made of. Names and emails come in parallel lists (the same
//! index gives a person's name and the handle they write it as), so no locale-dependent
//! `lower()` or transliteration runs in PostgreSQL: a seed gives the same bytes on any cluster.

pub(super) const FIRST_NAMES: [&str; 24] = [
    "Ada",
    "Grace",
    "Alan",
    "Zoë",
    "José",
    "Łukasz",
    "Siobhán",
    "Mei",
    "Kwame",
    "Chloé",
    "Björn",
    "Fatima",
    "Hiroshi",
    "Ingrid",
    "Jamal",
    "Katarzyna",
    "Liam",
    "Noor",
    "Priya",
    "Renée",
    "Søren",
    "Tomás",
    "Valentina",
    "Yusuf",
];
/// The same people as [`FIRST_NAMES`], as they write their email address.
pub(super) const HANDLES: [&str; 24] = [
    "ada", "grace", "alan", "zoe", "jose", "lukasz", "siobhan", "mei", "kwame", "chloe", "bjorn",
    "fatima", "hiroshi", "ingrid", "jamal", "kasia", "liam", "noor", "priya", "renee", "soren",
    "tomas", "vale", "yusuf",
];
pub(super) const LAST_NAMES: [&str; 16] = [
    "Lovelace",
    "Hopper",
    "O'Brien",
    "Müller",
    "García",
    "Nowak",
    "Nakamura",
    "Okafor",
    "van der Berg",
    "D'Angelo",
    "Ødegaard",
    "Kowalski",
    "Silva",
    "Chen",
    "Dubois",
    "Nguyen",
];
/// The same families as [`LAST_NAMES`], as they write their email address.
pub(super) const LAST_HANDLES: [&str; 16] = [
    "lovelace",
    "hopper",
    "obrien",
    "mueller",
    "garcia",
    "nowak",
    "nakamura",
    "okafor",
    "vanderberg",
    "dangelo",
    "odegaard",
    "kowalski",
    "silva",
    "chen",
    "dubois",
    "nguyen",
];
pub(super) const DOMAINS: [&str; 5] = [
    "example.com",
    "mail.example.org",
    "school.example",
    "Example.NET",
    "uni.example.edu",
];
pub(super) const SUBJECTS: [&str; 12] = [
    "Rust",
    "PostgreSQL",
    "Laravel",
    "Data Science",
    "UX Design",
    "Marketing",
    "Accounting",
    "Photography",
    "Spanish",
    "Machine Learning",
    "Public Speaking",
    "Café Management",
];
pub(super) const LEVELS: [&str; 6] = [
    "Intro to",
    "Advanced",
    "Practical",
    "Mastering",
    "Foundations of",
    "Weekend Bootcamp:",
];
/// Quotes, ampersands, non-ASCII, a tab: text that breaks hand-built SQL and CSV.
pub(super) const SENTENCES: [&str; 10] = [
    "It's hands-on: 10 labs, 3 projects.",
    "Bring a laptop & your curiosity.",
    "Kurs auf Deutsch — Grundlagen & Übungen.",
    "\"Best course I took this year\" — a graduate",
    "No prior experience needed; we start from zero.",
    "Includes a certificate (PDF, 1 page).",
    "Live Q&A every Friday at 17:00 CET.",
    "Prix spécial pour les étudiants !",
    "Week 1\tsetup\nWeek 2\tpractice",
    "100% online, 0% boring.",
];
pub(super) const JOB_TITLES: [&str; 10] = [
    "Junior Developer",
    "Data Analyst",
    "Teaching Assistant",
    "Marketing Manager",
    "Backend Engineer (Rust)",
    "UX Researcher",
    "Bookkeeper",
    "Photographer's Assistant",
    "Head of Growth",
    "DBA, PostgreSQL",
];
pub(super) const COMPANIES: [&str; 10] = [
    "Acme Corp",
    "O'Reilly & Sons",
    "Müller GmbH",
    "Initech",
    "Globex",
    "Umbrella Learning",
    "Zürich Analytics AG",
    "北京教育科技",
    "Hooli",
    "Soylent \"Foods\" Ltd",
];
pub(super) const LEAD_SOURCES: [&str; 6] = [
    "landing_page",
    "referral",
    "google_ads",
    "newsletter",
    "linkedin",
    "csv_import",
];
pub(super) const MEDIUMS: [&str; 4] = ["cpc", "email", "social", "organic"];
pub(super) const CAMPAIGNS: [&str; 5] = [
    "spring-launch",
    "black_friday",
    "alumni 2023",
    "webinar#4",
    "été",
];
pub(super) const ANSWERS: [&str; 5] = [
    "career change",
    "promotion",
    "just curious",
    "my employer pays",
    "",
];
pub(super) const TEMPLATE_NAMES: [&str; 6] = [
    "Hero",
    "Minimal",
    "Webinar",
    "Course launch",
    "Black Friday",
    "Newsletter signup",
];
pub(super) const CSS_CLASSES: [&str; 4] = ["hero", "hero hero--dark", "split", "card-grid"];
pub(super) const SLUG_WORDS: [&str; 10] = [
    "learn", "rust", "spring", "offer", "free", "webinar", "career", "data", "bootcamp", "alumni",
];
pub(super) const THEMES: [&str; 3] = ["light", "dark", "system"];
pub(super) const LOCALES: [&str; 6] = ["en", "de", "fr", "pl", "ja", "pt-BR"];
pub(super) const WIDGETS: [&str; 5] = ["courses", "leads", "revenue", "calendar", "inbox"];
pub(super) const REFERRERS: [&str; 5] = [
    "google.com",
    "t.co",
    "newsletter",
    "(direct)",
    "linkedin.com",
];

pub(super) const TENANT_NAMES: [&str; 8] = [
    "Bright",
    "Northern",
    "Open",
    "Café",
    "Golden",
    "Saint-Émile",
    "Blue Ridge",
    "Quantum",
];
pub(super) const TENANT_NAME_SLUGS: [&str; 8] = [
    "bright",
    "northern",
    "open",
    "cafe",
    "golden",
    "saint-emile",
    "blue-ridge",
    "quantum",
];
pub(super) const TENANT_NOUNS: [&str; 6] = [
    "Academy",
    "Coders",
    "School of Design",
    "Learning Co.",
    "Akademie",
    "Bootcamp",
];
pub(super) const TENANT_NOUN_SLUGS: [&str; 6] = [
    "academy",
    "coders",
    "school-of-design",
    "learning-co",
    "akademie",
    "bootcamp",
];
