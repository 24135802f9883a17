// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text;

namespace Hyve.Config;

/// <summary>
/// bhyve's configuration tree (bhyve_config(5)): string values at the leaves of a tree named by dotted paths
/// such as <c>pci.0.3.0.path</c>. Internal nodes have no value; a path cannot be both a value and a node.
/// Values are stored as given; <see cref="Get"/> expands <c>%(other.key)</c> references as bhyve does.
/// Not thread-safe: it is built while parsing options and read while building the machine.
/// </summary>
public sealed class ConfigTree
{
    private sealed class Node
    {
        public string? Value;                                   // set on leaves only
        public SortedDictionary<string, Node>? Children;        // set on internal nodes only
    }

    private readonly Node _root = new() { Children = new(StringComparer.Ordinal) };
    private HashSet<string>? _written;

    /// <summary>From now on remembers every key set (<see cref="Written"/>): the options call it after the defaults, so a
    /// restore can tell a value the command line gave from a default, even when the two are equal.</summary>
    public void TrackWrites() => _written = new(StringComparer.Ordinal);

    /// <summary>Keys set since <see cref="TrackWrites"/> (empty when not tracking).</summary>
    public IReadOnlySet<string> Written => _written ?? (IReadOnlySet<string>)new HashSet<string>();

    /// <summary>Sets <paramref name="path"/> to <paramref name="value"/>, creating the nodes above it.
    /// Throws <see cref="ConfigException"/> when the path is malformed or collides with a node or value.</summary>
    public void Set(string path, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        var parts = Split(path);
        var node = _root;
        for (int i = 0; i < parts.Length - 1; i++)
        {
            if (!node.Children!.TryGetValue(parts[i], out var next))
            {
                next = new Node { Children = new(StringComparer.Ordinal) };
                node.Children.Add(parts[i], next);
            }
            else if (next.Children is null)
            {
                throw new ConfigException($"config variable '{Join(parts, i + 1)}' is a value, so '{path}' cannot be set under it");
            }
            node = next;
        }
        string leaf = parts[^1];
        _written?.Add(string.Join('.', parts));
        if (node.Children!.TryGetValue(leaf, out var existing))
        {
            if (existing.Children is not null)
                throw new ConfigException($"config node '{path}' has variables under it and cannot be given a value");
            existing.Value = value;
        }
        else
        {
            node.Children.Add(leaf, new Node { Value = value });
        }
    }

    /// <summary>Sets a boolean the way bhyve writes one ("true" or "false").</summary>
    public void SetBool(string path, bool value) => Set(path, value ? "true" : "false");

    /// <summary>Sets <paramref name="path"/> only when it has no value yet.</summary>
    public void SetIfUnset(string path, string value)
    {
        if (GetRaw(path) is null) Set(path, value);
    }

    /// <summary>Removes a value or a whole node; false when nothing was there.</summary>
    public bool Remove(string path)
    {
        var parts = Split(path);
        var node = _root;
        for (int i = 0; i < parts.Length - 1; i++)
        {
            if (node.Children is null || !node.Children.TryGetValue(parts[i], out node!)) return false;
        }
        return node.Children is not null && node.Children.Remove(parts[^1]);
    }

    /// <summary>The stored (unexpanded) value at <paramref name="path"/>, or null when unset or a node.</summary>
    public string? GetRaw(string path) => Find(path) is { Children: null } n ? n.Value : null;

    /// <summary>True when <paramref name="path"/> names an internal node (a device node such as <c>pci.0.3.0</c>).</summary>
    public bool IsNode(string path) => Find(path) is { Children: not null };

    /// <summary>True when <paramref name="path"/> holds a value or is a node.</summary>
    public bool Exists(string path) => Find(path) is not null;

    /// <summary>The names directly under node <paramref name="path"/> (empty string: the root), sorted ordinally.</summary>
    public IReadOnlyList<string> ChildNames(string path)
    {
        var node = path.Length == 0 ? _root : Find(path);
        if (node?.Children is null) return [];
        return [.. node.Children.Keys];
    }

    /// <summary>The value at <paramref name="path"/> with <c>%(key)</c> references expanded (bhyve_config(5)), or null.
    /// <c>%%</c> is a literal percent sign; a reference to an unset key expands to nothing.</summary>
    public string? Get(string path)
    {
        var raw = GetRaw(path);
        return raw is null ? null : Expand(raw, 0);
    }

    /// <summary>Reads a boolean (true/on/yes/1, false/off/no/0, any case); <paramref name="defaultValue"/> when unset.</summary>
    public bool GetBool(string path, bool defaultValue)
    {
        var v = Get(path);
        if (v is null) return defaultValue;
        if (TryParseBool(v, out bool b)) return b;
        throw new ConfigException($"invalid boolean value for {path}: '{v}'");
    }

    /// <summary>Reads an integer in strtol(3) syntax (decimal, 0x hex, leading-0 octal) within [min, max];
    /// <paramref name="defaultValue"/> when unset.</summary>
    public long GetInt(string path, long defaultValue, long min = long.MinValue, long max = long.MaxValue)
    {
        var v = Get(path);
        if (v is null) return defaultValue;
        if (TryParseInteger(v, out long n) && n >= min && n <= max) return n;
        throw new ConfigException($"Invalid value for {path}: '{v}'");
    }

    /// <summary>Reads a byte count in expand_number(3) syntax (a number with an optional K/M/G/T/P/E suffix, powers of 1024);
    /// <paramref name="defaultValue"/> when unset.</summary>
    public ulong GetSize(string path, ulong defaultValue)
    {
        var v = Get(path);
        if (v is null) return defaultValue;
        if (Sizes.TryExpandNumber(v, out ulong n)) return n;
        throw new ConfigException($"invalid size for {path}: '{v}'");
    }

    /// <summary>Reads a guest memory size the way bhyve reads <c>memory.size</c> (vm_parse_memsize: a plain number below 1 MiB counts
    /// in MiB, otherwise bytes; with a suffix, expand_number). Zero and overflow are rejected. Default 256 MiB.</summary>
    public ulong GetMemorySize(string path = "memory.size")
    {
        var v = Get(path) ?? "256M";
        if (Sizes.TryParseMemorySize(v, out ulong n) && n != 0) return n;
        throw new ConfigException($"invalid memsize '{v}'");
    }

    /// <summary>All values as (full dotted path, stored value), sorted ordinally by path.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Entries()
    {
        var list = new List<KeyValuePair<string, string>>();
        var sb = new StringBuilder();
        Walk(_root, sb, list);
        list.Sort(static (a, b) => string.CompareOrdinal(a.Key, b.Key));
        return list;
    }

    /// <summary>The tree as <c>-o config.dump=1</c> prints it: one <c>key=value</c> line per value, full dotted path, sorted.</summary>
    public string Dump()
    {
        var sb = new StringBuilder();
        foreach (var kv in Entries()) sb.Append(kv.Key).Append('=').Append(kv.Value).Append('\n');
        return sb.ToString();
    }

    /// <summary>bhyve's boolean words (bhyve_config(5)), case-insensitive.</summary>
    public static bool TryParseBool(string s, out bool value)
    {
        switch (s.ToLowerInvariant())
        {
            case "true": case "on": case "yes": case "1": value = true; return true;
            case "false": case "off": case "no": case "0": value = false; return true;
            default: value = false; return false;
        }
    }

    /// <summary>Parses a whole string as strtol(3) with base 0 would: optional sign, then 0x hex, leading-0 octal or decimal.</summary>
    public static bool TryParseInteger(string s, out long value)
    {
        value = 0;
        var t = s.AsSpan();
        bool neg = false;
        if (t.Length > 0 && (t[0] == '+' || t[0] == '-')) { neg = t[0] == '-'; t = t[1..]; }
        if (t.Length == 0) return false;
        ulong magnitude = 0;
        bool ok;
        if (t.Length > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X'))
            ok = ulong.TryParse(t[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out magnitude);
        else if (t.Length > 1 && t[0] == '0')
            ok = TryParseOctal(t[1..], out magnitude);
        else
            ok = IsDigits(t) && ulong.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out magnitude);
        if (!ok) return false;
        if (neg)
        {
            if (magnitude > (ulong)long.MaxValue + 1) return false;
            value = magnitude == (ulong)long.MaxValue + 1 ? long.MinValue : -(long)magnitude;
        }
        else
        {
            if (magnitude > long.MaxValue) return false;
            value = (long)magnitude;
        }
        return true;
    }

    internal static bool IsDigits(ReadOnlySpan<char> t)
    {
        if (t.Length == 0) return false;
        foreach (char c in t) if (c < '0' || c > '9') return false;
        return true;
    }

    private static bool TryParseOctal(ReadOnlySpan<char> t, out ulong value)
    {
        value = 0;
        foreach (char c in t)
        {
            if (c < '0' || c > '7') return false;
            if (value > (ulong.MaxValue >> 3)) return false;
            value = (value << 3) | (uint)(c - '0');
        }
        return true;
    }

    private Node? Find(string path)
    {
        if (string.IsNullOrEmpty(path)) return null;
        var node = _root;
        foreach (var part in path.Split('.'))
        {
            if (node.Children is null || !node.Children.TryGetValue(part, out var next)) return null;
            node = next;
        }
        return node;
    }

    private static string[] Split(string path)
    {
        if (string.IsNullOrEmpty(path)) throw new ConfigException("empty config variable name");
        var parts = path.Split('.');
        foreach (var p in parts)
            if (p.Length == 0) throw new ConfigException($"invalid config variable name '{path}'");
        return parts;
    }

    private static string Join(string[] parts, int count) => string.Join('.', parts, 0, count);

    private static void Walk(Node node, StringBuilder prefix, List<KeyValuePair<string, string>> list)
    {
        foreach (var (name, child) in node.Children!)
        {
            int mark = prefix.Length;
            if (mark > 0) prefix.Append('.');
            prefix.Append(name);
            if (child.Children is null) list.Add(new(prefix.ToString(), child.Value!));
            else Walk(child, prefix, list);
            prefix.Length = mark;
        }
    }

    // bhyve limits nesting so a value that refers to itself cannot loop forever.
    private const int MaxExpansionDepth = 16;

    private string Expand(string value, int depth)
    {
        if (value.IndexOf('%') < 0) return value;
        var sb = new StringBuilder(value.Length);
        for (int i = 0; i < value.Length; i++)
        {
            char c = value[i];
            if (c != '%') { sb.Append(c); continue; }
            if (i + 1 < value.Length && value[i + 1] == '%') { sb.Append('%'); i++; continue; }
            int close = i + 1 < value.Length && value[i + 1] == '(' ? value.IndexOf(')', i + 2) : -1;
            if (close < 0 || depth >= MaxExpansionDepth) { sb.Append('%'); continue; }
            string key = value.Substring(i + 2, close - i - 2);
            string? referenced = key.Length == 0 ? null : GetRaw(key);
            if (referenced is not null) sb.Append(Expand(referenced, depth + 1));
            i = close;
        }
        return sb.ToString();
    }
}
