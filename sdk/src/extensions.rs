use std::any::{Any, TypeId};
use std::collections::HashMap;

/// A typed bag for plugin-to-plugin data on one request (at most one value per type).
///
/// ```
/// use gemini_proxy_sdk::Extensions;
/// struct Tenant(&'static str);
/// let mut ext = Extensions::default();
/// ext.insert(Tenant("acme"));
/// assert_eq!(ext.get::<Tenant>().map(|t| t.0), Some("acme"));
/// ```
#[derive(Default)]
pub struct Extensions {
    map: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// Stores a value, returning the previous one of the same type.
    ///
    /// ```
    /// let mut ext = gemini_proxy_sdk::Extensions::default();
    /// assert!(ext.insert(1u32).is_none());
    /// assert_eq!(ext.insert(2u32), Some(1));
    /// ```
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        self.map
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// Borrows the value of type `T`, if present.
    ///
    /// ```
    /// let ext = gemini_proxy_sdk::Extensions::default();
    /// assert!(ext.get::<String>().is_none());
    /// ```
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Takes the value of type `T` out, if present.
    ///
    /// ```
    /// let mut ext = gemini_proxy_sdk::Extensions::default();
    /// ext.insert(1u32);
    /// assert_eq!(ext.remove::<u32>(), Some(1));
    /// assert!(ext.get::<u32>().is_none());
    /// ```
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.map
            .remove(&TypeId::of::<T>())
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// Mutably borrows the value of type `T`, if present.
    ///
    /// ```
    /// let mut ext = gemini_proxy_sdk::Extensions::default();
    /// ext.insert(1u32);
    /// *ext.get_mut::<u32>().unwrap() += 1;
    /// assert_eq!(ext.get::<u32>(), Some(&2));
    /// ```
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.map.get_mut(&TypeId::of::<T>())?.downcast_mut()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} values)", self.map.len())
    }
}
